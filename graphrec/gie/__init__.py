"""MMBee's Graph-guided Interest Expansion: gifting graphs, Swing, metapath expansions, GraphCL."""
