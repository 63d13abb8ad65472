"""A run: load the input (write-ahead), then send passes over it until every row is final."""
