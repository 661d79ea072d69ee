//! `banyan-root` (placeholder).
