"""Tests of the packaging: systemd units, the Debian package, offline install, Kubernetes."""
