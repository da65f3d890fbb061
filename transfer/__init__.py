"""Tasks, transfer sets and the content-addressed teacher cache."""
