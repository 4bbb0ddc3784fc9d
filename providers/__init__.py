"""Where stages run: the local node, an existing Ray cluster, AWS. Each implements base.Provider."""
