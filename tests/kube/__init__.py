"""Tests against a real kube-apiserver; see README.md."""
