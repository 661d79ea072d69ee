//! `banyan-agent` (placeholder).
