//! Python lists of token ids, built from one shared int per id.
//!
//! Why share an int per id: a new int per token costs an allocation when the list is built
//! and a free when it is dropped, and 84% of o200k's tokens on the benchmark corpus are above
//! the 256 small ints CPython shares itself (batches measured 10-20% faster than with a new
//! int for each id above 16,384). Made on first use, the ints lie in memory in the order the
//! text first needs them, so the frequent ones share cache lines. At most 40
//! bytes per id of the vocabulary: 8 for its slot, 32 for its int once a result has held it
//! (o200k: 1.6 MB, up to 8 MB). Slots of 8 bytes rather than a `OnceLock`'s 16 measured 3-7%
//! faster: the table is read once per token, at ids all over the vocabulary.

use crate::bpe::Rank;
use crate::cache::prefetch;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// One slot per id: its shared int, or null until a result holds the id. Slots are written
/// only with the GIL held; threads encoding a batch read them without it (`words`).
pub(super) struct Ints(Box<[AtomicPtr<ffi::PyObject>]>);

/// What a list will hold for an id, as looked up without the GIL: its int's address (even),
/// or `id << 1 | 1` where the int is still to be made.
pub(super) type Word = u64;

/// How many tokens ahead an id's slot is asked for (by whoever reads the slots: the list's
/// builder, or the pool in `words`), and half that, the int it holds (by the list's builder):
/// the tables (o200k: 1.6 MB of slots, up to 8 MB of ints) were just evicted from the cache
/// by the encoding. Batches measured 5-7% faster, one thread 1-2%.
const AHEAD: usize = 32;

impl Ints {
    pub(super) fn new(n_vocab: usize) -> Self {
        Ints((0..n_vocab).map(|_| Default::default()).collect())
    }

    /// The words of `ids`, for their list to be built by the thread holding the GIL: threads
    /// encoding a batch look the ints up themselves, leaving the one thread building lists
    /// little more than counting references and copying.
    pub(super) fn words(&self, ids: &[Rank]) -> Vec<Word> {
        (0..ids.len())
            .map(|i| {
                self.prefetch_slot(ids, i + AHEAD);
                let id = ids[i];
                match self.0[id as usize].load(Ordering::Acquire) {
                    int if int.is_null() => Word::from(id) << 1 | 1,
                    int => int as usize as Word,
                }
            })
            .collect()
    }

    /// Asks the cache for the slot of `ids[at]`, where there is one.
    #[inline(always)]
    fn prefetch_slot(&self, ids: &[Rank], at: usize) {
        if let Some(&id) = ids.get(at) {
            prefetch(self.0.as_ptr().wrapping_add(id as usize));
        }
    }

    /// The list of `ids`.
    pub(super) fn list_of_ids<'py>(
        &self,
        py: Python<'py>,
        ids: &[Rank],
    ) -> PyResult<Bound<'py, PyList>> {
        build_list(py, ids.len(), |i| {
            self.prefetch_slot(ids, i + AHEAD);
            if let Some(&id) = ids.get(i + AHEAD / 2) {
                prefetch(self.0[id as usize].load(Ordering::Relaxed));
            }
            // SAFETY: `build_list` holds the GIL.
            unsafe { self.int(py, ids[i]) }
        })
    }

    /// The list of the ids behind `words`.
    pub(super) fn list_of_words<'py>(
        &self,
        py: Python<'py>,
        words: &[Word],
    ) -> PyResult<Bound<'py, PyList>> {
        build_list(py, words.len(), |i| {
            if let Some(&ahead) = words.get(i + AHEAD / 2) {
                prefetch(ahead as usize as *const ffi::PyObject);
            }
            let word = words[i];
            if word & 1 == 0 {
                Ok(word as usize as *mut ffi::PyObject)
            } else {
                // SAFETY: `build_list` holds the GIL.
                unsafe { self.int(py, (word >> 1) as Rank) }
            }
        })
    }

    /// `id`'s shared int, made the first time it is needed (the slot keeps that reference).
    ///
    /// # Safety
    /// The GIL is held: no other thread writes the slot.
    #[inline(always)]
    unsafe fn int(&self, py: Python<'_>, id: Rank) -> PyResult<*mut ffi::PyObject> {
        let slot = &self.0[id as usize];
        let int = slot.load(Ordering::Relaxed);
        if !int.is_null() {
            return Ok(int);
        }
        let int = ffi::PyLong_FromUnsignedLong(id.into());
        if int.is_null() {
            return Err(PyErr::fetch(py));
        }
        slot.store(int, Ordering::Release);
        Ok(int)
    }
}

impl Drop for Ints {
    fn drop(&mut self) {
        Python::attach(|_| {
            for int in self.0.iter() {
                let int = int.load(Ordering::Relaxed);
                if !int.is_null() {
                    // SAFETY: the slot owns one reference to it; the GIL is held.
                    unsafe { ffi::Py_DecRef(int) }
                }
            }
        })
    }
}

/// A new list of `len` items, the i-th a new reference to the int `int(i)` gives, built in
/// place.
#[inline(always)]
fn build_list<'py>(
    py: Python<'py>,
    len: usize,
    mut int: impl FnMut(usize) -> PyResult<*mut ffi::PyObject>,
) -> PyResult<Bound<'py, PyList>> {
    // SAFETY: the list is new and ours; each item is set once, to a reference the list takes
    // over (an item left NULL by an error is allowed: freeing the list skips it).
    unsafe {
        let list = ffi::PyList_New(len as ffi::Py_ssize_t);
        let list = Bound::from_owned_ptr_or_err(py, list)?;
        let items = list_items(py, list.as_ptr());
        for i in 0..len {
            let item = int(i)?;
            // What `Py_INCREF` compiles to in C for the stable ABI of Python 3.9 (pyo3 calls
            // `Py_IncRef` instead, a call per token); CPython 3.12+ keeps it correct for
            // immortal objects (PEP 683).
            (*item).ob_refcnt += 1;
            match items {
                Some(items) => *items.add(i) = item,
                None => {
                    ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, item);
                }
            }
        }
        // A list of ints cannot be part of a reference cycle, so the cycle collector need
        // not visit it: a program keeping many results (a corpus of short documents)
        // otherwise spends a sixth of its time in collections walking them. As for a tuple,
        // which CPython itself untracks once it holds only such objects. (A caller who later
        // puts the list inside itself makes a cycle that is never freed: a leak, never a
        // crash, as a reference from an untracked object only keeps its target alive.)
        ffi::PyObject_GC_UnTrack(list.as_ptr().cast());
        Ok(list.cast_into_unchecked())
    }
}

/// The items of a new list, to be set in place: `PyList_SetItem` is a call with checks per
/// token (setting them in place measured 10-13% faster on batches, 3-6% on one thread, with
/// o200k). The stable ABI has no `PyList_SET_ITEM`, but every CPython lays a list out as a
/// sized object's header followed by the pointer to its items; that is checked once (the
/// type's size, then `PyList_GetItem`), and where it does not hold (a build that lays lists out
/// otherwise) each item is set by the call.
///
/// # Safety
/// The GIL is held and `list` is a list.
unsafe fn list_items(py: Python<'_>, list: *mut ffi::PyObject) -> Option<*mut *mut ffi::PyObject> {
    static LAYOUT_HOLDS: OnceLock<bool> = OnceLock::new();
    let at = |list: *mut ffi::PyObject| {
        list.cast::<u8>()
            .add(std::mem::size_of::<ffi::PyVarObject>())
            .cast::<*mut *mut ffi::PyObject>()
            .read()
    };
    let holds = *LAYOUT_HOLDS.get_or_init(|| {
        // Header, items pointer, allocated size: then the pointer read below is the items'.
        let header = std::mem::size_of::<ffi::PyVarObject>() + 2 * std::mem::size_of::<usize>();
        let size = py.get_type::<PyList>().getattr("__basicsize__");
        if !size
            .and_then(|s| s.extract::<usize>())
            .is_ok_and(|s| s == header)
        {
            return false;
        }
        let Ok(probe) = PyList::new(py, [py.None(), py.Ellipsis()]) else {
            return false;
        };
        let items = at(probe.as_ptr());
        !items.is_null()
            && (0..2).all(|i| *items.add(i) == ffi::PyList_GetItem(probe.as_ptr(), i as _))
    });
    holds.then(|| at(list))
}
