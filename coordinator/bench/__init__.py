"""Benchmarks behind `swarm bench ...`: each prints JSON and a table of what it measured."""
