mod config;
mod identity;
mod model;
fn main() {}
