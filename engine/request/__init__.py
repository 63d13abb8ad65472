"""Turning input rows into HTTP requests: reading the input, typed fields, request templates."""
