"""Generated from proto/bund/v1/*.proto by scripts/gen_protos.sh: never edit by hand."""
