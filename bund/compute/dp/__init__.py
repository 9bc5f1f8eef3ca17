"""Differential privacy: budgets as exact values (mechanisms and accountants follow)."""
