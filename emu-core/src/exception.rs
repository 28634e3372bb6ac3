//! Architectural exceptions: guest-visible faults, never host errors or panics.

/// An x86 exception raised by an instruction. The instruction has no architectural effect
/// when it raises one (RIP still points at it), except where the architecture says
/// otherwise (traps such as INT3 and INTO leave RIP after the instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exception {
    /// #DE (vector 0): divide by zero or quotient overflow.
    DivideError,
    /// #DB (vector 1).
    Debug,
    /// #BP (vector 3): INT3.
    Breakpoint,
    /// #OF (vector 4): INTO with OF set.
    Overflow,
    /// #BR (vector 5).
    BoundRange,
    /// #UD (vector 6): an instruction the CPU does not implement or an invalid encoding.
    InvalidOpcode,
    /// #NM (vector 7).
    DeviceNotAvailable,
    /// #DF (vector 8).
    DoubleFault,
    /// #TS (vector 10) with its error code.
    InvalidTss(u32),
    /// #NP (vector 11) with its error code.
    SegmentNotPresent(u32),
    /// #SS (vector 12) with its error code.
    StackFault(u32),
    /// #GP (vector 13) with its error code.
    GeneralProtection(u32),
    /// #PF (vector 14): faulting linear address (CR2) and error code.
    PageFault {
        /// The linear address that faulted (goes to CR2).
        addr: u64,
        /// The page-fault error code.
        code: u32,
    },
    /// #MF (vector 16): x87 floating-point error.
    FloatingPoint,
    /// #AC (vector 17).
    AlignmentCheck,
    /// #XM (vector 19): unmasked SIMD floating-point exception.
    SimdFloatingPoint,
}

impl Exception {
    /// The interrupt vector the exception is delivered through.
    pub fn vector(self) -> u8 {
        match self {
            Exception::DivideError => 0,
            Exception::Debug => 1,
            Exception::Breakpoint => 3,
            Exception::Overflow => 4,
            Exception::BoundRange => 5,
            Exception::InvalidOpcode => 6,
            Exception::DeviceNotAvailable => 7,
            Exception::DoubleFault => 8,
            Exception::InvalidTss(_) => 10,
            Exception::SegmentNotPresent(_) => 11,
            Exception::StackFault(_) => 12,
            Exception::GeneralProtection(_) => 13,
            Exception::PageFault { .. } => 14,
            Exception::FloatingPoint => 16,
            Exception::AlignmentCheck => 17,
            Exception::SimdFloatingPoint => 19,
        }
    }

    /// The error code pushed on delivery, for the exceptions that have one.
    pub fn error_code(self) -> Option<u32> {
        match self {
            Exception::InvalidTss(c)
            | Exception::SegmentNotPresent(c)
            | Exception::StackFault(c)
            | Exception::GeneralProtection(c) => Some(c),
            Exception::PageFault { code, .. } => Some(code),
            Exception::DoubleFault | Exception::AlignmentCheck => Some(0),
            _ => None,
        }
    }

    /// The conventional mnemonic, such as `#GP`.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Exception::DivideError => "#DE",
            Exception::Debug => "#DB",
            Exception::Breakpoint => "#BP",
            Exception::Overflow => "#OF",
            Exception::BoundRange => "#BR",
            Exception::InvalidOpcode => "#UD",
            Exception::DeviceNotAvailable => "#NM",
            Exception::DoubleFault => "#DF",
            Exception::InvalidTss(_) => "#TS",
            Exception::SegmentNotPresent(_) => "#NP",
            Exception::StackFault(_) => "#SS",
            Exception::GeneralProtection(_) => "#GP",
            Exception::PageFault { .. } => "#PF",
            Exception::FloatingPoint => "#MF",
            Exception::AlignmentCheck => "#AC",
            Exception::SimdFloatingPoint => "#XM",
        }
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error_code() {
            Some(code) => write!(
                f,
                "{} (vector {}, error code {code:#x})",
                self.mnemonic(),
                self.vector()
            ),
            None => write!(f, "{} (vector {})", self.mnemonic(), self.vector()),
        }
    }
}
