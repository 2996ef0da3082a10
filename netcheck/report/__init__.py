"""Reports: one results model, rendered as JSON, HTML (with Graphviz diagrams) and pcap files."""
