"""Checkout: the wallet, quotes, terms, and locking, redeeming, releasing, refunding a coupon."""
