"""s3db_ws_plugin."""
