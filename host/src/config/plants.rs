//! `[plants.P]`: each plant's lookup tables, its share of the host, its state quota, the keys
//! it trusts and its place in the Unified Namespace.

use super::routes::check_name;
use super::*;

/// The plants, read and checked.
pub(super) struct Plants {
    /// Each plant's lookup tables.
    pub plants: BTreeMap<String, Tables>,
    pub plant_limits: BTreeMap<String, PlantLimits>,
    pub trust: BTreeMap<String, crate::plugin::signature::TrustPolicy>,
    /// Each plant's ISA-95 levels (`[plants.P.uns]`), top down.
    pub plant_uns: BTreeMap<String, Vec<(String, String)>>,
}

/// Read `[plants]` (paths relative to `dir`); a plant's `max_in_flight` is within the host's.
pub(super) fn read(
    diag: &mut Diagnostics,
    dir: &Path,
    sections: &BTreeMap<Spanned<String>, PlantSection>,
    max_in_flight: usize,
) -> Plants {
    let mut plants = BTreeMap::new();
    let mut plant_limits = BTreeMap::new();
    let mut trust = BTreeMap::new();
    let mut plant_uns: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, plant) in sections {
        if let Some(uns) = &plant.uns {
            let given = [
                &uns.get_ref().enterprise,
                &uns.get_ref().site,
                &uns.get_ref().area,
                &uns.get_ref().line,
                &uns.get_ref().cell,
            ];
            let mut levels = Vec::new();
            let mut gap = None;
            for (level, value) in crate::mqtt::config::UNS_LEVELS.iter().zip(given) {
                match (value, gap) {
                    (Some(v), None) if v.is_empty() || v.contains(['/', '+', '#']) => {
                        diag.error_at(
                            uns.span(),
                            format!("plants.{}.uns.{level} = {v:?}: a level is one topic level (not empty; no /, + or #)", name.get_ref()),
                        );
                    }
                    (Some(v), None) => levels.push((level.to_string(), v.clone())),
                    (Some(_), Some(missing)) => diag.error_at(
                        uns.span(),
                        format!("plants.{}.uns gives {level} but not {missing}, the level above it (ISA-95: enterprise/site/area/line/cell)", name.get_ref()),
                    ),
                    (None, None) => gap = Some(*level),
                    (None, Some(_)) => {}
                }
            }
            plant_uns.insert(name.get_ref().clone(), levels);
        }
        if let Some(section) = &plant.trust {
            let mut keys = Vec::new();
            for key in section.keys.get_ref() {
                match crate::plugin::signature::read_public_key(&dir.join(key.get_ref())) {
                    Ok(k) => keys.push(k),
                    Err(e) => diag.error_at(key.span(), e),
                }
            }
            let min_signatures = ranged(
                diag,
                &format!("plants.{}.trust.min_signatures", name.get_ref()),
                section.min_signatures.as_ref(),
                1..=64,
                1,
            ) as usize;
            trust.insert(
                name.get_ref().clone(),
                crate::plugin::signature::TrustPolicy {
                    keys,
                    min_signatures,
                },
            );
        }
        check_name(diag, name, "plant");
        let mut tables = HashMap::new();
        for (table_name, table) in &plant.lookups {
            if let Some(table) = read_table(diag, dir, table) {
                tables.insert(table_name.get_ref().clone(), table);
            }
        }
        plants.insert(name.get_ref().clone(), Arc::new(tables));
        let share = if sections.len() > 1 {
            max_in_flight.div_ceil(2)
        } else {
            max_in_flight
        };
        let key = |k: &str| format!("plants.{}.{k}", name.get_ref());
        let plant_in_flight = ranged(
            diag,
            &key("max_in_flight"),
            plant.max_in_flight.as_ref(),
            1..=max_in_flight as u64,
            share as u64,
        ) as usize;
        plant_limits.insert(
            name.get_ref().clone(),
            PlantLimits {
                max_in_flight: plant_in_flight,
                max_waiting: ranged(
                    diag,
                    &key("max_waiting"),
                    plant.max_waiting.as_ref(),
                    0..=1_000_000,
                    4 * plant_in_flight as u64,
                ) as usize,
                state_max_keys: ranged(
                    diag,
                    &key("state_max_keys"),
                    plant.state_max_keys.as_ref(),
                    1..=100_000_000,
                    100_000,
                ),
                state_max_bytes: ranged(
                    diag,
                    &key("state_max_mib"),
                    plant.state_max_mib.as_ref(),
                    1..=65_536,
                    256,
                ) << 20,
            },
        );
    }

    Plants {
        plants,
        plant_limits,
        trust,
        plant_uns,
    }
}

fn read_table(diag: &mut Diagnostics, dir: &Path, table: &Spanned<LookupSection>) -> Option<Table> {
    let t = table.get_ref();
    match (&t.csv, &t.entries) {
        (Some(csv), None) => match lookup::read_csv(
            &dir.join(csv),
            t.key_column.as_deref(),
            t.value_column.as_deref(),
        ) {
            Ok(rows) => Some(rows),
            Err(e) => {
                diag.error_at(table.span(), e);
                None
            }
        },
        (None, Some(entries)) if t.key_column.is_none() && t.value_column.is_none() => Some(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        (None, Some(_)) => {
            diag.error_at(
                table.span(),
                "key_column and value_column apply to csv tables only",
            );
            None
        }
        _ => {
            diag.error_at(table.span(), "a lookup table needs exactly one of csv = \"FILE.csv\" or entries = { KEY = \"VALUE\" }");
            None
        }
    }
}
