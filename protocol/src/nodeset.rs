//! Node-set expressions (placeholder until the nodeset work lands).
