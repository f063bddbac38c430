"""asv benchmarks of xentstream, one module per area (see ``asv_bench/asv.conf.json``)."""
