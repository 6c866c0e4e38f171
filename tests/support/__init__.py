"""Test support code shared by kubetune's integration tests (see README.md here)."""
