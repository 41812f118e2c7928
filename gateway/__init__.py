"""claimgate: a coupon claim / redeem gateway."""
