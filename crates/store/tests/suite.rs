//! openraft's storage conformance suite (`openraft::testing::Suite`) against the sled
//! store: every test case gets a fresh store in its own temporary directory.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use quorate_store::{LogStore, StateMachineStore, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let io = |e: &dyn std::error::Error| -> StorageError<u64> {
            StorageIOError::new(
                ErrorSubject::Store,
                ErrorVerb::Write,
                openraft::AnyError::error(e),
            )
            .into()
        };
        let dir = TempDir::new().map_err(|e| io(&e))?;
        let storage = quorate_store::open(dir.path()).map_err(|e| io(&e))?;
        assert!(storage.is_fresh());
        Ok((dir, storage.log, storage.sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(SledBuilder)?;
    Ok(())
}
