"""The sweep engine: specs, grid expansion, the ledger, job scripts and backends."""
