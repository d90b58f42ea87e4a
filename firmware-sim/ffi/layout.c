/* Fails the build of firmware-sim's C sealer when sg_device is not laid out
 * as src/c_sealer.rs mirrors it (the same numbers are asserted there), so the
 * Rust mirror can never silently disagree with the header. C99 has no
 * _Static_assert: a negative array size is the error. */
#include <stddef.h>

#include "sealgate.h"

#define SG_SIM_CHECK(name, cond) typedef char sg_sim_check_##name[(cond) ? 1 : -1]

SG_SIM_CHECK(size, sizeof(sg_device) == 152);
struct sg_sim_align {
    char c;
    sg_device d;
};
SG_SIM_CHECK(align, offsetof(struct sg_sim_align, d) == 4);
SG_SIM_CHECK(device_id, offsetof(sg_device, device_id) == 0);
SG_SIM_CHECK(device_id_len, offsetof(sg_device, device_id_len) == 65);
SG_SIM_CHECK(kid, offsetof(sg_device, kid) == 68);
SG_SIM_CHECK(k_mac, offsetof(sg_device, k_mac) == 72);
SG_SIM_CHECK(k_enc, offsetof(sg_device, k_enc) == 104);
SG_SIM_CHECK(k_auth, offsetof(sg_device, k_auth) == 120);
