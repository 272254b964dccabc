/*
 * libnvidia-ml.c - a fake NVML (libnvidia-ml.so.1) for tests without a GPU.
 *
 * Just enough NVML for the fake nvidia-smi: init, count, handle by index or
 * UUID, name, UUID, minor number, driver and CUDA versions.  The GPU list is
 * gpuscan.c's: the GPUs whose /dev/nvidia<minor> is present and opens with
 * ENXIO, in PCI bus order, so inside a container it is exactly the injected
 * GPUs.
 *
 * nvmlInit fails like the real one when /dev/nvidiactl is missing (9,
 * DRIVER_NOT_LOADED) or denied (4, NO_PERMISSION).  Like the real NVML, with
 * "ModifyDeviceFiles: 1" in /proc/driver/nvidia/params it creates
 * /dev/nvidia-caps when missing (seen inside containers on the real host).
 *
 * Build-time knobs (-D): FAKE_DRIVER_VERSION, FAKE_CUDA_VERSION.
 */
#include <sys/stat.h>

#include "gpuscan.c"

#ifndef FAKE_DRIVER_VERSION
#define FAKE_DRIVER_VERSION "580.159.04"
#endif
#ifndef FAKE_CUDA_VERSION
#define FAKE_CUDA_VERSION 13000
#endif

typedef int nvmlReturn_t;
typedef struct fake_gpu *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_UNKNOWN = 999,
};

const char *nvlaunch_fake_driver_version = FAKE_DRIVER_VERSION;

static int init_count;
static struct fake_gpu gpus[FAKE_MAX_GPUS];
static unsigned int ngpus;

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    int e = fake_open_errno("/dev/nvidiactl");
    if (e == ENOENT)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (e == EPERM || e == EACCES)
        return NVML_ERROR_NO_PERMISSION;
    if (e != 0 && e != ENXIO)
        return NVML_ERROR_UNKNOWN;
    if (fake_modify_device_files()) {
        char p[4096];
        mkdir(fake_path(p, sizeof p, "/dev/nvidia-caps"), 0755);
    }
    ngpus = (unsigned int)fake_scan_gpus(gpus, FAKE_MAX_GPUS);
    init_count++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r)
{
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_string(char *out, unsigned int len, const char *s)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int len)
{
    return copy_string(version, len, FAKE_DRIVER_VERSION);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    if (!version)
        return NVML_ERROR_INVALID_ARGUMENT;
    *version = FAKE_CUDA_VERSION;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    return nvmlSystemGetCudaDriverVersion(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = ngpus;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= ngpus)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    if (!init_count)
        return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < ngpus; i++)
        if (strcmp(gpus[i].uuid, uuid) == 0) {
            *device = &gpus[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

static int valid(nvmlDevice_t d)
{
    return init_count && d >= gpus && d < gpus + ngpus;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int len)
{
    return valid(d) ? copy_string(name, len, d->model) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int len)
{
    return valid(d) ? copy_string(uuid, len, d->uuid) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor)
{
    if (!valid(d) || !minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    *minor = (unsigned int)d->minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index)
{
    if (!valid(d) || !index)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)(d - gpus);
    return NVML_SUCCESS;
}
