//! Writes the CRDs as YAML: into the folder given as the first argument, or all of them
//! to stdout (separated by `---`).

fn main() -> anyhow::Result<()> {
    let crds = realtime_operator::crd::all();
    match std::env::args().nth(1) {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in &crds {
                let path = std::path::Path::new(&dir).join(realtime_operator::crd::file_name(crd));
                std::fs::write(&path, realtime_operator::crd::to_yaml(crd)?)?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            for crd in &crds {
                println!("---\n{}", realtime_operator::crd::to_yaml(crd)?);
            }
        }
    }
    Ok(())
}
