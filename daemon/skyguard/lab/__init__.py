"""The lab: the namespace demo, the synthetic traffic generator, the topology, the packet builder, and the scoring of
results against labels. Tooling for demos, tests and benchmarks; the daemon never imports it."""
