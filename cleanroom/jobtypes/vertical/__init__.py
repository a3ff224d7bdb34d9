"""Vertical (column-split) logistic regression across holders of the same people.

``vertical_logreg`` trains a logistic regression whose columns are split between
a *guest* (the label holder, named in ``params.guest``) and one or more *hosts*
(feature holders); ``vertical_predict`` scores ids with the split model in place.

Protocol (``training``, ``alignment``, :mod:`protocols.vertical.gradient`):

1. Alignment: ECDH-PSI over the id columns in ``aligned`` mode. Each node learns
   which of its own rows every input shares and one common order of them, never
   another input's non-matching ids. Each node refuses, before any training, an
   overlap below its own minimum (``min_overlap`` setting, at least the policy's
   ``min_group_size``) with a reason that does not say the size.
2. The guest makes a fresh key pair and a batch-order seed and sends the public
   key and the seed to every host: by default (``params.gradient: ckks``) a CKKS
   public context (parameter set ``ckks-16384-d1``, public key only,
   :mod:`protocols.vertical.ckks_gradient`), else a Paillier key (3072 bits by
   default). Each node standardises its own columns on
   the aligned training rows (the last ``validation_fraction`` of the common
   order is the validation set).
3. Per mini-batch (Hardy et al. 2017, FATE hetero-LR with the guest as key
   holder): each host sends u_h = X_h w_h; the guest computes z = X_g w_g + b +
   sum u_h, the weighted residual d = c_y (sigmoid(z) - y), updates its own
   weights in the clear and sends [[d]] to every host; each host computes
   [[X_h^T d]], masks it and sends it back; the guest decrypts X_h^T d + r and
   returns it; the host removes r and updates w_h with its gradient plus the L2
   term. Paillier: r is a statistical mask (2^-40). CKKS: the inner products sit
   in ring coefficients, r is uniform mod q, the host re-randomises its reply with
   a fresh encryption of zero, and the guest floods each returned value (uniform,
   2^-41 statistical distance per batch from an output that depends on d and x
   only), so that exact decryptions never reach the host.
4. Per epoch: hosts send u_h on every aligned row; the guest evaluates training
   and validation loss and AUC itself and decides to continue or stop (early
   stopping on the validation loss, ``patience``/``min_delta``); on stopping
   every node restores its weights of the best epoch.
5. Release: every node seals a signed report to the analyst (the guest's: model
   card, training curve, metrics; a host's: its columns), the coordinator
   releases one salted commitment per node, and each node keeps its own part of
   the model (weights, scaler; the guest also the intercept) under
   ``<data_dir>/vertical/<job id>.json`` once it has vouched for the release.

What each party learns, per iteration and in total (semi-honest parties):

- The guest: its own data; per batch and per epoch every host's partial linear
  score u_h = X_h w_h on the aligned rows (not X_h, not w_h, not the gradient:
  it sees X_h^T d only plus a mask hiding it within 2^-40 (Paillier) or, with
  CKKS, a decryption uniform mod q and an RLWE-masked second component). Over many
  iterations the successive u_h span the column space of X_h on the aligned
  rows, so the guest can learn X_h up to an unknown invertible linear map of its
  columns; this is the protocol's known leakage, stated here so holders can
  weigh it. It also learns which of its ids every input shares.
- A host: its own data; ciphertexts under the guest's key; its own gradient
  X_h^T d / B per batch (with CKKS, plus a uniform flood error of at most
  2^(E-90) per sum, E from ``CkksLayout.flood_bits``; a B-row aggregate of
  residuals weighted by its own features: with batch_size 8 or more it does not
  single out one row's label, but many batches together constrain the labels),
  the batch order, the
  stopping decision and the best epoch; which of its ids every input shares.
- The coordinator: that the job runs, the epoch count, message sizes and
  timing, salted commitments; no features, labels, scores, gradients, losses or
  ids (the guest's progress report to it holds the epoch and batch only).
- The analyst: the model card (columns, hyper-parameters, a coarse bucket of the
  aligned size), the training curve and metrics computed by the guest (each
  epoch's training and validation loss also while the job runs, sealed to it:
  the same values as the curve); never weights (they stay split on the nodes).
- Operator + analyst: the same as the analyst plus traffic sizes.
- Operator + one holder: the holder's own view above; envelopes are sealed node
  to node, so the relay adds only sizes and timing.
- Guest + host together: the host's u_h and its gradient; enough to solve for
  the host's weights, and, as above, its features up to a linear map.

Malicious parties are out of scope: a guest that encrypts residuals beyond the
declared range could learn a host's feature row through the gradient (no range
proof is made); a host can bias the model. Inputs are still validated before
any cryptography: key size and shape, layout, context binding (job, epoch,
batch, direction), declared bounds and every unmasked value's range.

``vertical_predict``: each host sends the guest u_h for the requested ids it
holds (the guest learns those partial scores and which requested ids the host
holds); the guest seals to the analyst the scores of the ids every input holds
and the number left unscored. The coordinator relays sealed envelopes only.
"""

from cleanroom.jobtypes.vertical.jobs import VerticalLogRegJob, VerticalPredictJob

__all__ = ["VerticalLogRegJob", "VerticalPredictJob"]
