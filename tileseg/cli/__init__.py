"""Command-line interface: thin click wrappers over the library. Only this package imports click."""
