//! Real kubectl and helm against the simulator (in progress).
