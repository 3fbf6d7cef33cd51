//! The context every town operation runs in: one open transaction, the time of
//! the operation, and the seeded id generator.

use crate::ids::IdGen;
use crate::time::Timestamp;
use rusqlite::Connection;

pub struct Ctx<'a> {
    pub conn: &'a Connection,
    pub now: Timestamp,
    pub ids: &'a mut IdGen,
}

impl<'a> Ctx<'a> {
    pub fn new(conn: &'a Connection, now: Timestamp, ids: &'a mut IdGen) -> Self {
        Ctx { conn, now, ids }
    }
    pub fn new_id(&mut self) -> String {
        self.ids.uuid()
    }
}

/// The first eight characters of an id, as used in names and branches.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
