"""Where a node's datasets live — CSV or Parquet loaded into pandas, Parquet or CSV
files queried in place by DuckDB, tables or queries in a SQL database — each
served as a ``tables.Table`` whose queries re-check the content the node
published."""
