//! Prints the OpenAPI document the server serves: `cargo run --bin openapi > openapi/openapi.json`.

fn main() {
    println!("{}", funko_live::openapi_json());
}
