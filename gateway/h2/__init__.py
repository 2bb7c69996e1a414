"""Lean sans-I/O HTTP/2 codec: frames.py (wire constants and builders), hpack.py
(RFC 7541), connection.py (H2Connection, both roles, RFC 9113)."""
