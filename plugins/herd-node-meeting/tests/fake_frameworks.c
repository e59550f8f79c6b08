/* A stand-in for CoreAudio, CoreMediaIO and CoreFoundation, with the signatures of the SDK
 * headers, so macos_probe.py's ctypes calls can be run on a machine that is not a Mac.
 * Hand-written for the tests; the devices and their states are invented.
 *
 * Audio devices: 40 "MacBook Pro Microphone" (input only, built in, running when FAKE_MIC=1),
 *                41 "MacBook Pro Speakers" (output only), 42 "BlackHole 2ch" (virtual, duplex,
 *                always running).
 * Audio processes (absent when FAKE_OLD_MACOS=1, like macOS before 14.2):
 *                60 us.zoom.xos, recording from 40 when FAKE_MIC=1;
 *                61 com.obsproject.obs-studio, always recording from 42.
 * Cameras:       80 "FaceTime HD Camera" (built in, running when FAKE_CAM=1),
 *                81 "OBS Virtual Camera" (always running).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint32_t selector, scope, element; } Address;

#define FOURCC(s) (((uint32_t)(s)[0] << 24) | ((uint32_t)(s)[1] << 16) | ((uint32_t)(s)[2] << 8) | (uint32_t)(s)[3])
#define UNKNOWN_PROPERTY ((int32_t)FOURCC("who?"))

static int flag(const char *name) {
    const char *value = getenv(name);
    return value != NULL && strcmp(value, "1") == 0;
}

/* A property value: bytes to copy out. Returns 0 or an OSStatus. */
static int32_t lookup(int cmio, uint32_t obj, const Address *a, const void **data, uint32_t *size) {
    static uint32_t ids[4];
    static uint32_t u32;
    static int32_t i32;
    static const char *text;
    uint32_t sel = a->selector, scope = a->scope;
    *data = NULL;
    *size = 0;

    if (cmio) {
        if (obj == 1 && sel == FOURCC("dev#")) {
            ids[0] = 80; ids[1] = 81; *data = ids; *size = 8; return 0;
        }
        if (obj != 80 && obj != 81) return UNKNOWN_PROPERTY;
        if (sel == FOURCC("lnam")) {
            text = obj == 80 ? "FaceTime HD Camera" : "OBS Virtual Camera";
            *data = &text; *size = sizeof(text); return 0;
        }
        if (sel == FOURCC("tran")) { u32 = FOURCC("bltn"); *data = &u32; *size = 4; return 0; }
        if (sel == FOURCC("gone")) {
            u32 = obj == 80 ? (uint32_t)flag("FAKE_CAM") : 1; *data = &u32; *size = 4; return 0;
        }
        return UNKNOWN_PROPERTY;
    }

    if (obj == 1 && sel == FOURCC("dev#")) {
        ids[0] = 40; ids[1] = 41; ids[2] = 42; *data = ids; *size = 12; return 0;
    }
    if (obj == 1 && sel == FOURCC("prs#")) {
        if (flag("FAKE_OLD_MACOS")) return UNKNOWN_PROPERTY;
        ids[0] = 60; ids[1] = 61; *data = ids; *size = 8; return 0;
    }
    if (obj >= 40 && obj <= 42) {
        if (sel == FOURCC("lnam")) {
            text = obj == 40 ? "MacBook Pro Microphone" : obj == 41 ? "MacBook Pro Speakers" : "BlackHole 2ch";
            *data = &text; *size = sizeof(text); return 0;
        }
        if (sel == FOURCC("stm#")) {
            int has = scope == FOURCC("inpt") ? obj != 41 : obj != 40;
            ids[0] = obj * 10; *data = ids; *size = has ? 4 : 0; return 0;
        }
        if (sel == FOURCC("tran")) {
            u32 = obj == 42 ? FOURCC("virt") : FOURCC("bltn"); *data = &u32; *size = 4; return 0;
        }
        if (sel == FOURCC("gone")) {
            u32 = obj == 40 ? (uint32_t)flag("FAKE_MIC") : obj == 42 ? 1 : 0;
            *data = &u32; *size = 4; return 0;
        }
        return UNKNOWN_PROPERTY;
    }
    if (obj == 60 || obj == 61) {
        if (sel == FOURCC("ppid")) { i32 = obj == 60 ? 812 : 903; *data = &i32; *size = 4; return 0; }
        if (sel == FOURCC("pbid")) {
            text = obj == 60 ? "us.zoom.xos" : "com.obsproject.obs-studio";
            *data = &text; *size = sizeof(text); return 0;
        }
        if (sel == FOURCC("piri")) {
            u32 = obj == 60 ? (uint32_t)flag("FAKE_MIC") : 1; *data = &u32; *size = 4; return 0;
        }
        if (sel == FOURCC("pdv#") && scope == FOURCC("inpt")) {
            ids[0] = obj == 60 ? 40 : 42; *data = ids; *size = 4; return 0;
        }
        return UNKNOWN_PROPERTY;
    }
    return UNKNOWN_PROPERTY;
}

static int32_t get_size(int cmio, uint32_t obj, const Address *a, uint32_t *out) {
    const void *data;
    uint32_t size;
    int32_t status = lookup(cmio, obj, a, &data, &size);
    if (status == 0) *out = size;
    return status;
}

static int32_t copy_out(int cmio, uint32_t obj, const Address *a, uint32_t capacity, uint32_t *written, void *out) {
    const void *data;
    uint32_t size;
    int32_t status = lookup(cmio, obj, a, &data, &size);
    if (status != 0) return status;
    if (capacity < size) return (int32_t)FOURCC("!siz");
    memcpy(out, data, size);
    *written = size;
    return 0;
}

int32_t AudioObjectGetPropertyDataSize(uint32_t obj, const Address *a, uint32_t qs, const void *q, uint32_t *out) {
    (void)qs; (void)q;
    return get_size(0, obj, a, out);
}

int32_t AudioObjectGetPropertyData(uint32_t obj, const Address *a, uint32_t qs, const void *q, uint32_t *io_size, void *out) {
    (void)qs; (void)q;
    return copy_out(0, obj, a, *io_size, io_size, out);
}

int32_t CMIOObjectGetPropertyDataSize(uint32_t obj, const Address *a, uint32_t qs, const void *q, uint32_t *out) {
    (void)qs; (void)q;
    return get_size(1, obj, a, out);
}

int32_t CMIOObjectGetPropertyData(uint32_t obj, const Address *a, uint32_t qs, const void *q, uint32_t size, uint32_t *used, void *out) {
    (void)qs; (void)q;
    return copy_out(1, obj, a, size, used, out);
}

/* Our "CFString" is a pointer to a C string. */
unsigned char CFStringGetCString(const void *string, char *buffer, long size, uint32_t encoding) {
    const char *text = (const char *)string;
    (void)encoding;
    if ((long)strlen(text) + 1 > size) return 0;
    strcpy(buffer, text);
    return 1;
}

void CFRelease(const void *ref) {
    (void)ref; /* nothing to free: the strings are static */
}
