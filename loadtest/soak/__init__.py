"""The retention soak (``claimgate soak``): a million claims over a thousand short activities, time moved past
their end, their coupons' validity and the retention, the sweeps run; Redis must be back near where it started."""
