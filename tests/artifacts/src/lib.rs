//! Paths of the guest components built by `build.rs`: the bundled skills
//! (`BELTER_FS`, `DRUMMER_SEARCH`, `DRUMMER_WEB`) and the hostile fixtures
//! (`ATTACKER`, `SOCKET_USER`), plus the repository `ROOT`.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
