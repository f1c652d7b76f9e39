"""Generated from protos/distnode.proto by scripts/gen_proto.py; do not edit."""
