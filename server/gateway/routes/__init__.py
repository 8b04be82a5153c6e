"""HTTP routes: parse the wire type, call one service, return the wire type or a stream."""
