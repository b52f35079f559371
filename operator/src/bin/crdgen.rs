//! Writes the CRDs as YAML into each folder given as an argument (the repository keeps
//! them in `crds/` and `helm/realtime-operator/crds/`), or all of them to stdout.

fn main() -> anyhow::Result<()> {
    let crds = realtime_operator::crd::all();
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        for crd in &crds {
            println!("---\n{}", realtime_operator::crd::to_yaml(crd)?);
        }
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for crd in &crds {
            let path = std::path::Path::new(&dir).join(realtime_operator::crd::file_name(crd));
            std::fs::write(&path, realtime_operator::crd::to_yaml(crd)?)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
