/*
 * libcuda.c - a fake CUDA driver library (libcuda.so.1) for tests without a GPU.
 *
 * Exports the driver-API calls that shared/gpu/cutest.c uses, with the real
 * signatures and CUresult numbers, plus `nvlaunch_fake_driver_version` so a
 * probe can tell WHICH libcuda the dynamic loader picked.
 *
 * Build-time knobs (-D):
 *   FAKE_DRIVER_VERSION  "580.159.04"   the driver this library belongs to
 *   FAKE_CUDA_VERSION    13000          what cuDriverGetVersion reports
 *   FAKE_INIT_ERROR      0              if non-zero, cuInit always returns it
 *                                       (the CUDA compat decoy uses 803,
 *                                       CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)
 *
 * cuInit mirrors what a real libcuda sees when it opens /dev/nvidiactl:
 *   ENXIO (node present, device cgroup allowed it, no driver here) -> success
 *   ENOENT (node not injected)                -> 100 CUDA_ERROR_NO_DEVICE
 *   EPERM/EACCES (cgroup or mode denied it)   -> 999 CUDA_ERROR_UNKNOWN
 */
#include "gpuscan.c"

#ifndef FAKE_DRIVER_VERSION
#define FAKE_DRIVER_VERSION "580.159.04"
#endif
#ifndef FAKE_CUDA_VERSION
#define FAKE_CUDA_VERSION 13000
#endif
#ifndef FAKE_INIT_ERROR
#define FAKE_INIT_ERROR 0
#endif

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_SYSTEM_DRIVER_MISMATCH = 803,
    CUDA_ERROR_UNKNOWN = 999,
};

const char *nvlaunch_fake_driver_version = FAKE_DRIVER_VERSION;

static int initialized;
static struct fake_gpu gpus[FAKE_MAX_GPUS];
static int ngpus;
static CUcontext current_ctx;
static CUdeviceptr next_ptr = 0x7f0000000000ULL;

CUresult cuDriverGetVersion(int *version)
{
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = FAKE_CUDA_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuInit(unsigned int flags)
{
    (void)flags;
    if (FAKE_INIT_ERROR)
        return FAKE_INIT_ERROR;
    int e = fake_open_errno("/dev/nvidiactl");
    switch (e) {
    case 0:
    case ENXIO:
        break;
    case ENOENT:
        return CUDA_ERROR_NO_DEVICE;
    case EPERM:
    case EACCES:
        fprintf(stderr, "fake libcuda: cannot open /dev/nvidiactl: %s "
                "(denied by the device cgroup or the node's mode)\n", strerror(e));
        return CUDA_ERROR_UNKNOWN;
    default:
        fprintf(stderr, "fake libcuda: cannot open /dev/nvidiactl: %s\n", strerror(e));
        return CUDA_ERROR_UNKNOWN;
    }
    ngpus = fake_scan_gpus(gpus, FAKE_MAX_GPUS);
    initialized = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = ngpus;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= ngpus)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

static CUresult check_device(CUdevice dev)
{
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    return dev >= 0 && dev < ngpus ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    CUresult r = check_device(dev);
    if (r)
        return r;
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", gpus[dev].model);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice dev)
{
    CUresult r = check_device(dev);
    if (r)
        return r;
    if (!bus || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(bus, (size_t)len, "%s", gpus[dev].bus);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult r = check_device(dev);
    if (r)
        return r;
    *bytes = (size_t)143771ULL << 20; /* what an H200 reports, 143771 MiB */
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    CUresult r = check_device(dev);
    if (r)
        return r;
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    current_ctx = *ctx = (CUcontext)(unsigned long)(0x1000 + dev);
    return CUDA_SUCCESS;
}

CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    if (ctx == current_ctx)
        current_ctx = NULL;
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t bytes)
{
    if (!current_ctx)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!ptr || !bytes)
        return CUDA_ERROR_INVALID_VALUE;
    *ptr = next_ptr;
    next_ptr += (bytes + 0xfffff) & ~0xfffffULL;
    return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr ptr)
{
    (void)ptr;
    return current_ctx ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

CUresult cuGetErrorString(CUresult error, const char **str)
{
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
    case CUDA_SUCCESS: *str = "no error"; break;
    case CUDA_ERROR_INVALID_VALUE: *str = "invalid argument"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *str = "initialization error"; break;
    case CUDA_ERROR_NO_DEVICE: *str = "no CUDA-capable device is detected"; break;
    case CUDA_ERROR_INVALID_DEVICE: *str = "invalid device ordinal"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *str = "invalid device context"; break;
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
        *str = "system has unsupported display driver / cuda driver combination"; break;
    case CUDA_ERROR_UNKNOWN: *str = "unknown error"; break;
    default: *str = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
