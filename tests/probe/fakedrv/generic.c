/*
 * generic.c - the body of every fake driver library without behaviour of its
 * own (libnvidia-glcore, libnvoptix, ...), and of the non-NVIDIA and CUDA
 * toolkit decoys.  The fixture links it once per SONAME (-Wl,-soname,...).
 *
 * Build-time knob (-D): FAKE_DRIVER_VERSION, the version it claims to be.
 */
#ifndef FAKE_DRIVER_VERSION
#define FAKE_DRIVER_VERSION "580.159.04"
#endif

const char *nvlaunch_fake_driver_version = FAKE_DRIVER_VERSION;

/* Something callable, so a probe can check that dlsym works on it. */
int nvlaunch_fake_library(void)
{
    return 1;
}
