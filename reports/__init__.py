"""Reports and measured results (raw JSON under reports/data/)."""
