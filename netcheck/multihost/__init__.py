"""Several container hosts: the multi-host spec (``spec``), the join's plan (``plan``), the lab that
builds the hosts, the underlay and the join (``lab``), and cross-host probing (``probes``).
See docs/multihost.md.
"""
