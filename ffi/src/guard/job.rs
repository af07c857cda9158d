//! The Windows job object of a guarded command: it holds the command's tree
//! (processes the command starts after the assignment), so that one call
//! terminates all of it, and `KILL_ON_JOB_CLOSE` ends whatever is left when
//! the guard lets go of it.

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

/// A job object that kills every process in it when closed.
pub struct Job(HANDLE);
// SAFETY: a job handle may be used from any thread.
unsafe impl Send for Job {}
// SAFETY: as above; the calls used are thread-safe.
unsafe impl Sync for Job {}

impl Job {
    pub fn for_process(process: HANDLE) -> Option<Job> {
        // SAFETY: plain Win32 calls on handles we own or were given.
        unsafe {
            let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if job.is_null() {
                return None;
            }
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                &info as *const _ as *const _,
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            );
            if AssignProcessToJobObject(job, process) == 0 {
                CloseHandle(job);
                return None;
            }
            Some(Job(job))
        }
    }

    pub fn terminate(&self) {
        // SAFETY: the handle is valid until drop.
        unsafe { TerminateJobObject(self.0, 1) };
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: closed once; KILL_ON_JOB_CLOSE ends any leftover process.
        unsafe { CloseHandle(self.0) };
    }
}
