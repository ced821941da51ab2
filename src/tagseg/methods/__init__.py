"""The patch-classification methods of METHODS.md §1: pooling, MCE, PCE, label merge, L_ET."""
