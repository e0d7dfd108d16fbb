//! Generates the Rust code for `openshell.v1` at build time with a vendored `protoc`, so the
//! build needs no system protobuf compiler and the generated code cannot drift from the
//! `.proto` file.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=openshell/v1/openshell.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Service methods nobody has implemented yet answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_with_config(config, &["openshell/v1/openshell.proto"], &["."])?;
    Ok(())
}
