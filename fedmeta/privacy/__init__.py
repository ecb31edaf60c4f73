"""Privacy: options, accounting, DP-SGD and the membership-inference audit."""
