//! The platform client against the platform simulator, and the simulator's own strictness: every
//! call, every scripted fault, the acquire race, log offsets, re-offer after session expiry, and real
//! terraform using the simulator's state backend.

mod calls;
mod cancel;
mod faults;
mod fixture;
mod race;
mod sessions;
mod strictness;
mod table;
mod terraform;
