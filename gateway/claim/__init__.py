"""The claim path: claims and grants, the blocklist copy, the sold-out mark, load shedding."""
