//! Town-level state kept in the settings table: identity, configuration,
//! rigs, the drain flag and the alarm.

use super::beads;
use super::ctx::Ctx;
use crate::defects::{self, Defect};
use crate::error::{Result, TownError};
use crate::model::{RigOverrides, TownConfig};
use crate::store::{delete_setting, get_setting, put_setting};
use crate::time::{Timestamp, SECOND_MS};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub const KEY_TOWN_ID: &str = "town:id";
pub const KEY_CONFIG: &str = "town:config";
pub const KEY_DEFAULTS_SEEDED: &str = "town:config:newDefaultsSeeded";
pub const KEY_DRAINING: &str = "town:draining";
pub const KEY_DRAIN_NONCE: &str = "town:drainNonce";
pub const KEY_DRAIN_STARTED: &str = "town:drainStartedAt";
pub const KEY_INSTANCE: &str = "town:containerInstanceId";
pub const KEY_ALARM: &str = "alarm:at";
pub const KEY_ID_SEED: &str = "ids:seed";
pub const KEY_BOOTS: &str = "ids:boots";

pub const ACTIVE_ALARM_INTERVAL_MS: i64 = 5 * SECOND_MS;
pub const IDLE_ALARM_INTERVAL_MS: i64 = 300 * SECOND_MS;

/// Load the stored config; seed the new-town defaults on first use.
pub fn load_or_seed_config(conn: &Connection) -> Result<TownConfig> {
    match get_setting(conn, KEY_CONFIG)? {
        Some(text) => TownConfig::from_json(&text)
            .map_err(|e| TownError::Corrupt { what: "stored town config", detail: e.to_string() }),
        None => {
            let cfg = TownConfig::new_town_defaults();
            put_setting(conn, KEY_CONFIG, &serde_json::to_string(&cfg)?)?;
            put_setting(conn, KEY_DEFAULTS_SEEDED, "true")?;
            Ok(cfg)
        }
    }
}

pub fn save_config(conn: &Connection, cfg: &TownConfig) -> Result<()> {
    cfg.validate()?;
    put_setting(conn, KEY_CONFIG, &serde_json::to_string(cfg)?)
}

#[derive(Clone, Debug, Serialize)]
pub struct Rig {
    pub id: String,
    pub name: String,
    pub git_url: String,
    pub default_branch: String,
    pub config: RigOverrides,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRig {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub git_url: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub config: RigOverrides,
}

fn rig_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Rig, String)> {
    Ok((
        Rig {
            id: r.get(0)?,
            name: r.get(1)?,
            git_url: r.get(2)?,
            default_branch: r.get(3)?,
            config: RigOverrides::default(),
            created_at: Timestamp(r.get(5)?),
        },
        r.get(4)?,
    ))
}

fn with_config((mut rig, text): (Rig, String)) -> Result<Rig> {
    rig.config = RigOverrides::from_json(&text)
        .map_err(|e| TownError::Corrupt { what: "stored rig config", detail: format!("rig {}: {e}", rig.id) })?;
    Ok(rig)
}

pub fn find_rig(conn: &Connection, id: &str) -> Result<Option<Rig>> {
    conn.prepare_cached("SELECT id, name, git_url, default_branch, config, created_at FROM rigs WHERE id = ?1")?
        .query_row([id], rig_from_row)
        .optional()?
        .map(with_config)
        .transpose()
}

/// A rig's default branch (`main` for an unknown rig), without parsing its config.
pub fn default_branch(conn: &Connection, id: &str) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT default_branch FROM rigs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| "main".to_owned()))
}

pub fn get_rig(cx: &Ctx<'_>, id: &str) -> Result<Rig> {
    find_rig(cx.conn, id)?.ok_or_else(|| TownError::not_found("Rig", id))
}

pub fn list_rigs(conn: &Connection) -> Result<Vec<Rig>> {
    let mut st = conn.prepare_cached(
        "SELECT id, name, git_url, default_branch, config, created_at FROM rigs ORDER BY created_at, id",
    )?;
    let rows: Vec<(Rig, String)> = st.query_map([], rig_from_row)?.collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(with_config).collect()
}

/// Add or update a rig. A name held by another rig is taken over only when
/// that rig has no open or in-progress work.
pub fn add_rig(cx: &mut Ctx<'_>, input: AddRig) -> Result<Rig> {
    let name = input.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(TownError::invalid("rig", "name must be 1 to 100 characters"));
    }
    input.config.validate()?;
    let id = match input.id {
        Some(id) if !id.trim().is_empty() => id,
        _ => cx.new_id(),
    };
    let clash: Option<String> = cx
        .conn
        .prepare_cached("SELECT id FROM rigs WHERE name = ?1 AND id != ?2")?
        .query_row([name, &id], |r| r.get(0))
        .optional()?;
    if let Some(other) = clash {
        let busy: u32 = cx
            .conn
            .prepare_cached("SELECT COUNT(*) FROM beads WHERE rig_id = ?1 AND status IN ('open', 'in_progress')")?
            .query_row([&other], |r| r.get(0))?;
        if busy > 0 {
            return Err(TownError::invalid(
                "rig",
                format!("name `{name}` is taken by rig {other}, which has live work"),
            ));
        }
        remove_rig(cx, &other)?;
    }
    cx.conn
        .prepare_cached(
            "INSERT INTO rigs (id, name, git_url, default_branch, config, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, git_url = excluded.git_url, \
             default_branch = excluded.default_branch, config = excluded.config",
        )?
        .execute(params![
            id,
            name,
            input.git_url,
            input.default_branch.unwrap_or_else(|| "main".into()),
            serde_json::to_string(&input.config)?,
            cx.now.0
        ])?;
    get_rig(cx, &id)
}

/// Remove a rig and every bead that belongs to it.
pub fn remove_rig(cx: &mut Ctx<'_>, id: &str) -> Result<()> {
    get_rig(cx, id)?;
    let mut st = cx.conn.prepare_cached("SELECT bead_id FROM beads WHERE rig_id = ?1")?;
    let ids: Vec<String> = st.query_map([id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    beads::delete(cx, &ids)?;
    cx.conn.prepare_cached("DELETE FROM rigs WHERE id = ?1")?.execute([id])?;
    Ok(())
}

/// The container-eviction drain flag.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DrainState {
    pub draining: bool,
    pub nonce: Option<String>,
    pub started_at: Option<Timestamp>,
}

pub fn drain_state(conn: &Connection) -> Result<DrainState> {
    let draining = get_setting(conn, KEY_DRAINING)?.as_deref() == Some("true");
    let nonce = get_setting(conn, KEY_DRAIN_NONCE)?;
    let started_at = get_setting(conn, KEY_DRAIN_STARTED)?.and_then(|s| s.parse().ok()).map(Timestamp);
    Ok(DrainState { draining, nonce, started_at })
}

pub fn start_drain(cx: &mut Ctx<'_>) -> Result<String> {
    let nonce = cx.new_id();
    put_setting(cx.conn, KEY_DRAINING, "true")?;
    put_setting(cx.conn, KEY_DRAIN_NONCE, &nonce)?;
    put_setting(cx.conn, KEY_DRAIN_STARTED, &cx.now.0.to_string())?;
    Ok(nonce)
}

pub fn clear_drain(conn: &Connection) -> Result<()> {
    for k in [KEY_DRAINING, KEY_DRAIN_NONCE, KEY_DRAIN_STARTED] {
        delete_setting(conn, k)?;
    }
    Ok(())
}

pub fn alarm(conn: &Connection) -> Result<Option<Timestamp>> {
    Ok(get_setting(conn, KEY_ALARM)?.and_then(|s| s.parse().ok()).map(Timestamp))
}

pub fn set_alarm(conn: &Connection, at: Option<Timestamp>) -> Result<()> {
    match at {
        Some(t) => put_setting(conn, KEY_ALARM, &t.0.to_string()),
        None => delete_setting(conn, KEY_ALARM),
    }
}

pub fn town_exists(conn: &Connection) -> Result<bool> {
    Ok(get_setting(conn, KEY_TOWN_ID)?.is_some())
}

/// Arm the alarm 5 s out if none is set or the set one is in the past. Never
/// moves a future alarm.
pub fn arm_if_needed(conn: &Connection, now: Timestamp) -> Result<()> {
    if !town_exists(conn)? {
        return Ok(());
    }
    match alarm(conn)? {
        Some(at) if at >= now => Ok(()),
        _ => set_alarm(conn, Some(now.plus_ms(ACTIVE_ALARM_INTERVAL_MS))),
    }
}

/// Bring the alarm to at most 5 s from now. Only ever makes it earlier, so a
/// burst of calls cannot keep pushing the tick back (bug h).
pub fn escalate_to_active(conn: &Connection, now: Timestamp) -> Result<()> {
    if !town_exists(conn)? {
        return Ok(());
    }
    let target = now.plus_ms(ACTIVE_ALARM_INTERVAL_MS);
    match alarm(conn)? {
        Some(at) if at <= target && !defects::on(Defect::AlarmPostponedByRpc) => Ok(()),
        _ => set_alarm(conn, Some(target)),
    }
}
