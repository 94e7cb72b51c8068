mod config;
mod identity;
fn main() {}
