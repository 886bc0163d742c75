"""Configuration: rsyncd.conf, backupd.yaml, the embedded default, sersync.conf."""
