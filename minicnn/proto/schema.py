"""The messages of Caffe's format that minicnn reads and writes, with Caffe's field numbers and
defaults.

The table below is written in a small .proto-like notation of our own, one field per line:

    <number> <name> <type> [repeated] [packed] [array] [= <default>]      # comment

``<type>`` is a scalar type (int32, int64, uint32, uint64, bool, float, double, string, bytes),
an enum declared with ``enum``, or a message declared with ``message``. ``array`` marks a
repeated float or double field kept as one NumPy array instead of a list (blob data). A field
without a default takes its type's zero (0, false, "", the first enum value), as in proto2.
Numbers and defaults are the facts of Caffe's caffe.proto (BVLC master); SSD's messages, and
the two of Ross Girshick's Fast/Faster R-CNN fork (caffe-fast-rcnn), are included so that those
prototxts parse.
"""

import numbers

import numpy as np

SCHEMA = """
enum Phase               TRAIN=0 TEST=1
enum Engine              DEFAULT=0 CAFFE=1 CUDNN=2
enum VarianceNorm        FAN_IN=0 FAN_OUT=1 AVERAGE=2
enum DimCheckMode        STRICT=0 PERMISSIVE=1
enum PoolMethod          MAX=0 AVE=1 STOCHASTIC=2
enum RoundMode           CEIL=0 FLOOR=1
enum NormRegion          ACROSS_CHANNELS=0 WITHIN_CHANNEL=1
enum NormalizationMode   FULL=0 VALID=1 BATCH_SIZE=2 NONE=3
enum EltwiseOp           PROD=0 SUM=1 MAX=2
enum DB                  LEVELDB=0 LMDB=1
enum HingeNorm           L1=1 L2=2
enum ReductionOp         SUM=1 ASUM=2 SUMSQ=3 MEAN=4
enum SnapshotFormat      HDF5=0 BINARYPROTO=1
enum SolverMode          CPU=0 GPU=1
enum SolverType          SGD=0 NESTEROV=1 ADAGRAD=2 RMSPROP=3 ADADELTA=4 ADAM=5
enum CodeType            CORNER=1 CENTER_SIZE=2 CORNER_SIZE=3
enum LocLossType         L2=0 SMOOTH_L1=1
enum ConfLossType        SOFTMAX=0 LOGISTIC=1
enum MatchType           BIPARTITE=0 PER_PREDICTION=1
enum MiningType          NONE=0 MAX_NEGATIVE=1 HARD_EXAMPLE=2
enum SegLabelType        NONE=0 IMAGE=1 PIXEL=2          # DeepLab's ImageDataParameter.LabelType
enum SegAccuracyMetric   PixelAccuracy=0 ClassAccuracy=1 PixelIOU=2   # DeepLab's AccuracyMetric
enum V1LayerType         NONE=0 ACCURACY=1 BNLL=2 CONCAT=3 CONVOLUTION=4 DATA=5 DROPOUT=6
                         EUCLIDEAN_LOSS=7 FLATTEN=8 HDF5_DATA=9 HDF5_OUTPUT=10 IM2COL=11
                         IMAGE_DATA=12 INFOGAIN_LOSS=13 INNER_PRODUCT=14 LRN=15
                         MULTINOMIAL_LOGISTIC_LOSS=16 POOLING=17 RELU=18 SIGMOID=19 SOFTMAX=20
                         SOFTMAX_LOSS=21 SPLIT=22 TANH=23 WINDOW_DATA=24 ELTWISE=25 POWER=26
                         SIGMOID_CROSS_ENTROPY_LOSS=27 HINGE_LOSS=28 MEMORY_DATA=29 ARGMAX=30
                         THRESHOLD=31 DUMMY_DATA=32 SLICE=33 MVN=34 ABSVAL=35 SILENCE=36
                         CONTRASTIVE_LOSS=37 EXP=38 DECONVOLUTION=39
                         IMAGE_SEG_DATA=9039 SEG_ACCURACY=40 INTERP=41 PADDING=42 MAT_WRITE=43
                         MAT_READ=44 DENSE_CRF=45 DOMINANT_CHANNEL=46 BIAS_CHANNEL=47
                         UNIQUE_LABEL=48 CENSOR_LABEL=49 ADAPTIVE_BIAS_CHANNEL=50
                         CHANNEL_AGGREGATOR=51 IGNORE_OVERLAY=52 HISTOGRAM=53 RELATIVE_ERROR=54
                         GAIN_CHANNEL=55 ONEHOT=56

message BlobShape
  1   dim                 int64    repeated packed

message BlobProto
  1   num                 int32
  2   channels            int32
  3   height              int32
  4   width               int32
  5   data                float    repeated packed array
  6   diff                float    repeated packed array
  7   shape               BlobShape
  8   double_data         double   repeated packed array
  9   double_diff         double   repeated packed array

message BlobProtoVector
  1   blobs               BlobProto repeated

message Datum
  1   channels            int32
  2   height              int32
  3   width               int32
  4   data                bytes
  5   label               int32
  6   float_data          float    repeated array
  7   encoded             bool     = false

message FillerParameter
  1   type                string   = "constant"
  2   value               float    = 0
  3   min                 float    = 0
  4   max                 float    = 1
  5   mean                float    = 0
  6   std                 float    = 1
  7   sparse              int32    = -1
  8   variance_norm       VarianceNorm = FAN_IN

message NetParameter
  1   name                string
  2   layers              V1LayerParameter repeated
  3   input               string   repeated
  4   input_dim           int32    repeated
  5   force_backward      bool     = false
  6   state               NetState
  7   debug_info          bool     = false
  8   input_shape         BlobShape repeated
  100 layer               LayerParameter repeated

message SolverParameter
  1   train_net           string
  2   test_net            string   repeated
  3   test_iter           int32    repeated
  4   test_interval       int32    = 0
  5   base_lr             float
  6   display             int32
  7   max_iter            int32
  8   lr_policy           string
  9   gamma               float
  10  power               float
  11  momentum            float
  12  weight_decay        float
  13  stepsize            int32
  14  snapshot            int32    = 0
  15  snapshot_prefix     string
  16  snapshot_diff       bool     = false
  17  solver_mode         SolverMode = GPU
  18  device_id           int32    = 0
  19  test_compute_loss   bool     = false
  20  random_seed         int64    = -1
  21  train_net_param     NetParameter
  22  test_net_param      NetParameter repeated
  23  debug_info          bool     = false
  24  net                 string
  25  net_param           NetParameter
  26  train_state         NetState
  27  test_state          NetState repeated
  28  snapshot_after_train bool    = true
  29  regularization_type string   = "L2"
  30  solver_type         SolverType = SGD
  31  delta               float    = 1e-8
  32  test_initialization bool     = true
  33  average_loss        int32    = 1
  34  stepvalue           int32    repeated
  35  clip_gradients      float    = -1
  36  iter_size           int32    = 1
  37  snapshot_format     SnapshotFormat = BINARYPROTO
  38  rms_decay           float    = 0.99
  39  momentum2           float    = 0.999
  40  type                string   = "SGD"
  41  layer_wise_reduce   bool     = true
  42  weights             string   repeated
  44  show_per_class_result bool   = false    # SSD fork: log each class's AP in detection tests
  9041 eval_type          string   = "classification"  # SSD fork; its 41 is layer_wise_reduce above
  9042 ap_version         string   = "Integral"        # SSD fork; its 42 is weights above

message SolverState
  1   iter                int32
  2   learned_net         string
  3   history             BlobProto repeated
  4   current_step        int32    = 0
  1000 minicnn            MinicnnSolverState

# minicnn's own part of a .solverstate: what an exact resume needs beyond Caffe's fields. Its
# number is far from Caffe's, so Caffe reads minicnn's files (skipping it) and vice versa.
message MinicnnSolverState
  1   rng_state           string
  2   data_state          DataLayerState repeated
  3   solver_type         string
  4   layer_counter       LayerCounter repeated

message LayerCounter           # a layer's counter (Layer.counters): images seen, iterations
  1   net                 string
  2   layer               string
  3   name                string
  4   value               int64

message DataLayerState
  1   net                 string
  2   layer               string
  3   seed                uint64
  4   batches_served      int64

message NetState
  1   phase               Phase    = TEST
  2   level               int32    = 0
  3   stage               string   repeated

message NetStateRule
  1   phase               Phase
  2   min_level           int32
  3   max_level           int32
  4   stage               string   repeated
  5   not_stage           string   repeated

message ParamSpec
  1   name                string
  2   share_mode          DimCheckMode
  3   lr_mult             float    = 1
  4   decay_mult          float    = 1

message LayerParameter
  1   name                string
  2   type                string
  3   bottom              string   repeated
  4   top                 string   repeated
  5   loss_weight         float    repeated
  6   param               ParamSpec repeated
  7   blobs               BlobProto repeated
  8   include             NetStateRule repeated
  9   exclude             NetStateRule repeated
  10  phase               Phase
  11  propagate_down      bool     repeated
  100 transform_param     TransformationParameter
  101 loss_param          LossParameter
  102 accuracy_param      AccuracyParameter
  103 argmax_param        ArgMaxParameter
  104 concat_param        ConcatParameter
  105 contrastive_loss_param ContrastiveLossParameter
  106 convolution_param   ConvolutionParameter
  107 data_param          DataParameter
  108 dropout_param       DropoutParameter
  109 dummy_data_param    DummyDataParameter
  110 eltwise_param       EltwiseParameter
  111 exp_param           ExpParameter
  112 hdf5_data_param     HDF5DataParameter
  113 hdf5_output_param   HDF5OutputParameter
  114 hinge_loss_param    HingeLossParameter
  115 image_data_param    ImageDataParameter
  116 infogain_loss_param InfogainLossParameter
  117 inner_product_param InnerProductParameter
  118 lrn_param           LRNParameter
  119 memory_data_param   MemoryDataParameter
  120 mvn_param           MVNParameter
  121 pooling_param       PoolingParameter
  122 power_param         PowerParameter
  123 relu_param          ReLUParameter
  124 sigmoid_param       SigmoidParameter
  125 softmax_param       SoftmaxParameter
  126 slice_param         SliceParameter
  127 tanh_param          TanHParameter
  128 threshold_param     ThresholdParameter
  129 window_data_param   WindowDataParameter
  130 python_param        PythonParameter
  131 prelu_param         PReLUParameter
  132 spp_param           SPPParameter
  133 reshape_param       ReshapeParameter
  134 log_param           LogParameter
  135 flatten_param       FlattenParameter
  136 reduction_param     ReductionParameter
  137 embed_param         EmbedParameter
  138 tile_param          TileParameter
  139 batch_norm_param    BatchNormParameter
  140 elu_param           ELUParameter
  141 bias_param          BiasParameter
  142 scale_param         ScaleParameter
  143 input_param         InputParameter
  144 crop_param          CropParameter
  145 parameter_param     ParameterParameter
  146 recurrent_param     RecurrentParameter
  147 swish_param         SwishParameter
  148 clip_param          ClipParameter
  202 permute_param       PermuteParameter
  203 prior_box_param     PriorBoxParameter
  204 detection_output_param DetectionOutputParameter
  201 multibox_loss_param MultiBoxLossParameter
  205 detection_evaluate_param DetectionEvaluateParameter  # SSD fork
  206 norm_param          NormalizeParameter
  200 annotated_data_param AnnotatedDataParameter  # SSD (weiliu89/caffe, branch ssd)
  9143 interp_param       InterpParameter    # DeepLab/PSPNet fork; their 143 is BVLC's input_param
  9137 bn_param           BNParameter        # PSPNet/yjxiong fork; their 137 is BVLC's embed_param
  164 shuffle_channel_param ShuffleChannelParameter  # ShuffleNet forks (farmingyard, camel007)
  159 reorg_param         ReorgParameter     # YOLOv2 Caffe ports (caffe-yolov2)
  149 upsample_param      UpsampleParameter  # YOLOv3 ports' number (SegNet's fork: 138)
  9149 psroi_pooling_param PSROIPoolingParameter  # R-FCN's fork; its 149 is upsample_param above
  8266711 roi_pooling_param ROIPoolingParameter     # caffe-fast-rcnn (Fast/Faster R-CNN)
  8266712 smooth_l1_loss_param SmoothL1LossParameter  # caffe-fast-rcnn
  20001 detection_param   DetectionParameter  # minicnn's own (YOLOv1). 20000+: clear of
  20002 detection_data_param DetectionDataParameter  # BVLC's numbers and known forks' (Yahoo's
  20110 segmentation_data_param SegmentationDataParameter  # open_nsfw model uses 10001)
  20003 region_param      RegionParameter     # minicnn's own (YOLOv2's [region])
  20004 yolo_param        YoloParameter       # minicnn's own (YOLOv3's [yolo])
  20005 local_param       LocalParameter      # minicnn's own (Darknet's [local])
  20006 softmax_tree_param SoftmaxTreeParameter  # minicnn's own (Darknet's [softmax] tree=)
  9147 center_loss_param  CenterLossParameter  # ydwen/caffe-face; its 147 is BVLC's swish_param
  9247 margin_inner_product_param MarginInnerProductParameter  # SphereFace; also its 147
  163 label_specific_add_param LabelSpecificAddParameter  # AM-Softmax (happynear) forks
  154 seg_accuracy_param  SegAccuracyParameter  # DeepLab v2 fork (deeplab-public-ver2)
  155 mat_write_param     MatWriteParameter     # DeepLab v2 fork
  214 normalize_param     FaceNormalizeParameter  # happynear's caffe-windows (AM-Softmax, NormFace)
  237 channel_scale_param ChannelScaleParameter  # happynear's caffe-windows (AM-Softmax's wo_fn)
  212 flip_param          FlipParameter  # happynear's caffe-windows (AM-Softmax's mirror deploy)
  9124 focal_loss_param   FocalLossParameter  # zimenglan-sysu-512's; its 124 is sigmoid_param
  9146 dense_crf_param    DenseCRFParameter  # DeepLab v2 fork; its 146 is BVLC's recurrent_param
  151 mat_read_param      MatReadParameter   # DeepLab v2 fork (its number; free in BVLC)
  157 softmax_focal_loss_param SoftmaxFocalLossParameter  # Longqi-S/Focal-Loss (its copies' number)

message TransformationParameter
  1   scale               float    = 1
  2   mirror              bool     = false
  3   crop_size           uint32   = 0
  4   mean_file           string
  5   mean_value          float    repeated
  6   force_color         bool     = false
  7   force_gray          bool     = false
  8   resize_param        ResizeParameter    # SSD's fields (weiliu89/caffe, branch ssd) ...
  9   noise_param         NoiseParameter
  10  emit_constraint     EmitConstraint
  11  crop_h              uint32   = 0
  12  crop_w              uint32   = 0
  13  distort_param       DistortionParameter
  14  expand_param        ExpansionParameter  # ... to here
  9008 scale_factors      float    repeated  # DeepLab v2 fork (ImageSegData); its 8, 9 and 10
  9009 crop_width         uint32   = 0       # are SSD's resize_param, noise_param and
  9010 crop_height        uint32   = 0       # emit_constraint

message LossParameter
  1   ignore_label        int32
  2   normalize           bool
  3   normalization       NormalizationMode = VALID

message AccuracyParameter
  1   top_k               uint32   = 1
  2   axis                int32    = 1
  3   ignore_label        int32
  4   min_is_better       bool     = false  # happynear's caffe-windows (AM-Softmax's auto/)

message ArgMaxParameter
  1   out_max_val         bool     = false
  2   top_k               uint32   = 1
  3   axis                int32

message ConcatParameter
  1   concat_dim          uint32   = 1
  2   axis                int32    = 1

message BatchNormParameter
  1   use_global_stats    bool
  2   moving_average_fraction float = 0.999
  3   eps                 float    = 1e-5

message BiasParameter
  1   axis                int32    = 1
  2   num_axes            int32    = 1
  3   filler              FillerParameter

message ContrastiveLossParameter
  1   margin              float    = 1
  2   legacy_version      bool     = false

message ConvolutionParameter
  1   num_output          uint32
  2   bias_term           bool     = true
  3   pad                 uint32   repeated
  4   kernel_size         uint32   repeated
  5   group               uint32   = 1
  6   stride              uint32   repeated
  7   weight_filler       FillerParameter
  8   bias_filler         FillerParameter
  9   pad_h               uint32   = 0
  10  pad_w               uint32   = 0
  11  kernel_h            uint32
  12  kernel_w            uint32
  13  stride_h            uint32
  14  stride_w            uint32
  15  engine              Engine   = DEFAULT
  16  axis                int32    = 1
  17  force_nd_im2col     bool     = false
  18  dilation            uint32   repeated
  9017 hole               uint32   = 1       # DeepLab v1's dilation (its 17, 18, 19 are
  9018 hole_h             uint32   = 1       # BVLC's force_nd_im2col, dilation and the
  9019 hole_w             uint32   = 1       # next): upgraded to dilation

message CropParameter
  1   axis                int32    = 2
  2   offset              uint32   repeated

message DataParameter
  1   source              string
  2   scale               float    = 1
  3   mean_file           string
  4   batch_size          uint32
  5   crop_size           uint32   = 0
  6   mirror              bool     = false
  7   rand_skip           uint32   = 0
  8   backend             DB       = LEVELDB
  9   force_encoded_color bool     = false
  10  prefetch            uint32   = 4

message DropoutParameter
  1   dropout_ratio       float    = 0.5
  2   scale_train         bool     = true    # caffe-fast-rcnn: false scales at TEST, not TRAIN

message DummyDataParameter
  1   data_filler         FillerParameter repeated
  2   num                 uint32   repeated
  3   channels            uint32   repeated
  4   height              uint32   repeated
  5   width               uint32   repeated
  6   shape               BlobShape repeated

message EltwiseParameter
  1   operation           EltwiseOp = SUM
  2   coeff               float    repeated
  3   stable_prod_grad    bool     = true

message ELUParameter
  1   alpha               float    = 1

message EmbedParameter
  1   num_output          uint32
  2   input_dim           uint32
  3   bias_term           bool     = true
  4   weight_filler       FillerParameter
  5   bias_filler         FillerParameter

message ExpParameter
  1   base                float    = -1
  2   scale               float    = 1
  3   shift               float    = 0

message FlattenParameter
  1   axis                int32    = 1
  2   end_axis            int32    = -1

message HDF5DataParameter
  1   source              string
  2   batch_size          uint32
  3   shuffle             bool     = false

message HDF5OutputParameter
  1   file_name           string

message HingeLossParameter
  1   norm                HingeNorm = L1

message ImageDataParameter
  1   source              string
  2   scale               float    = 1
  3   mean_file           string
  4   batch_size          uint32   = 1
  5   crop_size           uint32   = 0
  6   mirror              bool     = false
  7   rand_skip           uint32   = 0
  8   shuffle             bool     = false
  9   new_height          uint32   = 0
  10  new_width           uint32   = 0
  11  is_color            bool     = true
  12  root_folder         string   = ""
  15  ignore_label        int32    = 255     # DeepLab fork (ImageSegData): padding's label
  16  label_type          SegLabelType = IMAGE  # DeepLab fork (ImageSegData)
  10001 bucket_by_size    bool     = false   # minicnn's: batches of one image size

message InfogainLossParameter
  1   source              string
  2   axis                int32    = 1

message InnerProductParameter
  1   num_output          uint32
  2   bias_term           bool     = true
  3   weight_filler       FillerParameter
  4   bias_filler         FillerParameter
  5   axis                int32    = 1
  6   transpose           bool     = false
  7   normalize           bool     = false  # happynear's caffe-windows (AM-Softmax's fc6)

message InputParameter
  1   shape               BlobShape repeated

message LogParameter
  1   base                float    = -1
  2   scale               float    = 1
  3   shift               float    = 0

message LRNParameter
  1   local_size          uint32   = 5
  2   alpha               float    = 1
  3   beta                float    = 0.75
  4   norm_region         NormRegion = ACROSS_CHANNELS
  5   k                   float    = 1
  6   engine              Engine   = DEFAULT

message MemoryDataParameter
  1   batch_size          uint32
  2   channels            uint32
  3   height              uint32
  4   width               uint32

message MVNParameter
  1   normalize_variance  bool     = true
  2   across_channels     bool     = false
  3   eps                 float    = 1e-9

message ParameterParameter
  1   shape               BlobShape

message PoolingParameter
  1   pool                PoolMethod = MAX
  2   kernel_size         uint32
  3   stride              uint32   = 1
  4   pad                 uint32   = 0
  5   kernel_h            uint32
  6   kernel_w            uint32
  7   stride_h            uint32
  8   stride_w            uint32
  9   pad_h               uint32   = 0
  10  pad_w               uint32   = 0
  11  engine              Engine   = DEFAULT
  12  global_pooling      bool     = false
  13  round_mode          RoundMode = CEIL
  1013 ceil_mode          bool     = true    # forks' (BVLC/caffe#3057, their 13): as round_mode

message PowerParameter
  1   power               float    = 1
  2   scale               float    = 1
  3   shift               float    = 0

message PythonParameter
  1   module              string
  2   layer               string
  3   param_str           string   = ""
  4   share_in_parallel   bool     = false

message RecurrentParameter
  1   num_output          uint32   = 0
  2   weight_filler       FillerParameter
  3   bias_filler         FillerParameter
  4   debug_info          bool     = false
  5   expose_hidden       bool     = false

message ReductionParameter
  1   operation           ReductionOp = SUM
  2   axis                int32    = 0
  3   coeff               float    = 1

message ReLUParameter
  1   negative_slope      float    = 0
  2   engine              Engine   = DEFAULT

message ReshapeParameter
  1   shape               BlobShape
  2   axis                int32    = 0
  3   num_axes            int32    = -1

message ScaleParameter
  1   axis                int32    = 1
  2   num_axes            int32    = 1
  3   filler              FillerParameter
  4   bias_term           bool     = false
  5   bias_filler         FillerParameter
  6   min_value           float    # 6-7: happynear's caffe-windows, GlobalLSEMargin's scale
  7   max_value           float    # bounds (unset: 0 and FLT_MAX); minicnn's Scale refuses them

message SigmoidParameter
  1   engine              Engine   = DEFAULT

message SliceParameter
  1   slice_dim           uint32   = 1
  2   slice_point         uint32   repeated
  3   axis                int32    = 1

message SoftmaxParameter
  1   engine              Engine   = DEFAULT
  2   axis                int32    = 1
  3   hard_ratio          float    = 1   # 3-6, 8: happynear's caffe-windows (SoftmaxWithLoss
  4   class_weight        float    repeated  # with a weights bottom; its numbers, free in BVLC):
  5   hard_mining_label   int32             # hard_mining_label, cutting_point and
  6   cutting_point       float             # label_smooth_factor parse and are refused
  7   normalize_type      string   = "Softmax"  # happynear's caffe-windows (AM-Softmax's auto/);
                                   # SoftmaxWithLoss: only "Softmax" ("L2"/"L1" refused)
  8   label_smooth_factor float    = 0

message SwishParameter
  1   beta                float    = 1

message ClipParameter
  1   min                 float
  2   max                 float

message TanHParameter
  1   engine              Engine   = DEFAULT

message TileParameter
  1   axis                int32    = 1
  2   tiles               int32

message ThresholdParameter
  1   threshold           float    = 0

message WindowDataParameter
  1   source              string
  2   scale               float    = 1
  3   mean_file           string
  4   batch_size          uint32
  5   crop_size           uint32   = 0
  6   mirror              bool     = false
  7   fg_threshold        float    = 0.5
  8   bg_threshold        float    = 0.5
  9   fg_fraction         float    = 0.25
  10  context_pad         uint32   = 0
  11  crop_mode           string   = "warp"
  12  cache_images        bool     = false
  13  root_folder         string   = ""

message SPPParameter
  1   pyramid_height      uint32
  2   pool                PoolMethod = MAX
  6   engine              Engine   = DEFAULT
  10001 bins              uint32   repeated   # minicnn's: SPP-net's explicit pyramid (1 2 3 6)

message PReLUParameter
  1   filler              FillerParameter
  2   channel_shared      bool     = false

message PermuteParameter
  1   order               uint32   repeated

message PriorBoxParameter
  1   min_size            float    repeated
  2   max_size            float    repeated
  3   aspect_ratio        float    repeated
  4   flip                bool     = true
  5   clip                bool     = false
  6   variance            float    repeated
  7   img_size            uint32
  8   img_h               uint32
  9   img_w               uint32
  10  step                float
  11  step_h              float
  12  step_w              float
  13  offset              float    = 0.5

message NonMaximumSuppressionParameter
  1   nms_threshold       float    = 0.3
  2   top_k               int32
  3   eta                 float    = 1

message SaveOutputParameter
  1   output_directory    string
  2   output_name_prefix  string
  3   output_format       string
  4   label_map_file      string
  5   name_size_file      string
  6   num_test_image      uint32

message DetectionOutputParameter
  1   num_classes         uint32
  2   share_location      bool     = true
  3   background_label_id int32    = 0
  4   nms_param           NonMaximumSuppressionParameter
  5   save_output_param   SaveOutputParameter
  6   code_type           CodeType = CORNER
  7   keep_top_k          int32    = -1
  8   variance_encoded_in_target bool = false
  9   confidence_threshold float
  10  visualize           bool     = false
  11  visualize_threshold float
  12  save_file           string
  1000 clip               bool     = false   # OpenCV's own field: decoded boxes to [0, 1]

message BNParameter            # the PSPNet/yjxiong fork's BN layer (batch norm + slope + bias)
  1   slope_filler        FillerParameter
  2   bias_filler         FillerParameter
  3   momentum            float    = 0.9
  4   eps                 float    = 1e-5
  5   frozen              bool     = false
  6   engine              Engine   = DEFAULT

message InterpParameter        # the DeepLab/PSPNet fork's bilinear resize layer
  1   height              int32    = 0
  2   width               int32    = 0
  3   zoom_factor         int32    = 1
  4   shrink_factor       int32    = 1
  5   pad_beg             int32    = 0
  6   pad_end             int32    = 0

message DetectionParameter     # minicnn's YOLOv1 "Detection" layer, Darknet's [detection]
  1   side                uint32   = 7
  2   num                 uint32   = 2
  3   classes             uint32   = 20
  4   coords              uint32   = 4
  5   sqrt                bool     = true
  6   rescore             bool     = true
  7   softmax             bool     = false
  8   object_scale        float    = 1
  9   noobject_scale      float    = 0.5
  10  class_scale         float    = 1
  11  coord_scale         float    = 5

message RegionParameter        # minicnn's "Region" layer, Darknet's [region] (YOLOv2)
  1   classes             uint32   = 20
  2   coords              uint32   = 4
  3   num                 uint32   = 1
  4   softmax             bool     = false
  5   background          bool     = false
  6   anchors             float    repeated
  7   object_scale        float    = 1       # 7-15: [region]'s training keys (its loss), with
  8   noobject_scale      float    = 1       # parse_region's defaults
  9   class_scale         float    = 1
  10  coord_scale         float    = 1
  11  thresh              float    = 0.5
  12  rescore             bool     = false
  13  bias_match          bool     = false
  14  absolute            bool     = false   # parsed by Darknet, never used
  15  seen                uint64   = 0       # images seen before (the prior warm-up's counter)
  16  tree_parent         int32    repeated packed  # YOLO9000's softmax tree ([region] tree=):
                                        # each class's parent, -1 at the top
  17  class_map           int32    repeated packed  # [region] map=: truth class -> output class

message SoftmaxTreeParameter   # minicnn's "SoftmaxTree" layer, Darknet's [softmax] tree=
  1   parent              int32    repeated packed  # each node's parent, -1 at the top
  2   axis                int32    = 1

message LocalParameter         # minicnn's "Local" layer, Darknet's [local] (unshared conv)
  1   num_output          uint32
  2   kernel_size         uint32   = 1
  3   stride              uint32   = 1
  4   pad                 uint32   = 0
  5   bias_term           bool     = true
  6   weight_filler       FillerParameter
  7   bias_filler         FillerParameter

message YoloParameter          # minicnn's "Yolo" layer, Darknet's [yolo] (YOLOv3)
  1   classes             uint32   = 20
  2   mask                uint32   repeated
  3   anchors             float    repeated
  4   ignore_thresh       float    = 0.5     # 4-6: [yolo]'s training keys (its loss)
  5   truth_thresh        float    = 1
  6   max_boxes           uint32   = 90      # Darknet's max
  7   net_width           uint32   = 0       # the [net]'s input size the anchors are in
  8   net_height          uint32   = 0

message DetectionDataParameter # minicnn's "DetectionData" layer: images + Darknet label files
  1   source              string
  2   batch_size          uint32   = 1
  3   shuffle             bool     = false
  4   new_height          uint32   = 0
  5   new_width           uint32   = 0
  6   is_color            bool     = true
  7   root_folder         string   = ""
  8   max_boxes           uint32   = 30
  9   jitter              float    = 0
  10  flip                bool     = false
  11  rand_skip           uint32   = 0
  12  prefetch            uint32   = 4
  13  rgb                 bool     = false  # channels R, G, B: Darknet's order (converted nets)
  14  augment             DetectionAugment = DARKNET_V1  # TRAIN: YOLOv1's crop, or v2/v3's loader
  15  hue                 float    = 0      # 15-17: DARKNET_V2's HSV distortion ([net] keys)
  16  saturation          float    = 1
  17  exposure            float    = 1
  18  random_size         bool     = false  # DARKNET_V2: [region]/[yolo] random=1, multi-scale
  19  max_batches         uint32   = 0      # [net] max_batches: its last 200 train at 608

enum DetectionAugment    DARKNET_V1=0 DARKNET_V2=1   # load_data_region / load_data_detection

message SegmentationDataParameter  # minicnn's "SegmentationData": image + label-image pairs
  1   source              string
  2   batch_size          uint32   = 1
  3   shuffle             bool     = false
  4   crop_size           uint32   = 0
  5   mirror              bool     = false
  6   scale_min           float    = 1
  7   scale_max           float    = 1
  8   ignore_label        uint32   = 255
  9   is_color            bool     = true
  10  root_folder         string   = ""
  11  rand_skip           uint32   = 0
  12  prefetch            uint32   = 4

message SegAccuracyParameter   # DeepLab's SegAccuracy (deeplab-public, deeplab-public-ver2)
  1   metric              SegAccuracyMetric = PixelAccuracy   # read by the fork, never used
  2   ignore_label        int32    repeated
  3   reset               bool     = true    # false: the confusion matrix accumulates

message SoftmaxLossParameter   # DeepLab v1's SOFTMAX_LOSS options (upgraded to loss_param)
  2   ignore_label        int32    repeated
  16  weight_source       string

message MatWriteParameter      # DeepLab's MatWrite (prefix is required there)
  1   prefix              string
  2   source              string   = ""
  3   strip               int32    = 0
  4   period              int32    = 1

message UpsampleParameter      # SegNet's Upsample (max-unpooling); the YOLOv3 ports' takes scale
  1   scale               uint32   = 2
  2   scale_h             uint32
  3   scale_w             uint32
  4   pad_out_h           bool     = false
  5   pad_out_w           bool     = false
  6   upsample_h          uint32
  7   upsample_w          uint32

message ReorgParameter         # YOLOv2 Caffe ports' Reorg (Darknet's reorg layer)
  1   stride              uint32
  2   reverse             bool     = false

message ShuffleChannelParameter  # ShuffleNet forks' ShuffleChannel
  1   group               uint32   = 1

message ROIPoolingParameter    # caffe-fast-rcnn's ROIPooling
  1   pooled_h            uint32   = 0
  2   pooled_w            uint32   = 0
  3   spatial_scale       float    = 1

message PSROIPoolingParameter  # R-FCN's PSROIPooling (all three required there)
  1   spatial_scale       float
  2   output_dim          int32
  3   group_size          int32

message SmoothL1LossParameter  # caffe-fast-rcnn's SmoothL1Loss
  1   sigma               float    = 1

message MultiBoxLossParameter  # SSD's MultiBoxLoss (Wei Liu's caffe, branch ssd)
  1   loc_loss_type       LocLossType = SMOOTH_L1
  2   conf_loss_type      ConfLossType = SOFTMAX
  3   loc_weight          float    = 1
  4   num_classes         uint32
  5   share_location      bool     = true
  6   match_type          MatchType = PER_PREDICTION
  7   overlap_threshold   float    = 0.5
  8   use_prior_for_matching bool  = true
  9   background_label_id uint32   = 0
  10  use_difficult_gt    bool     = true
  11  do_neg_mining       bool
  12  neg_pos_ratio       float    = 3
  13  neg_overlap         float    = 0.5
  14  code_type           CodeType = CORNER
  16  encode_variance_in_target bool = false
  17  map_object_to_agnostic bool  = false
  18  ignore_cross_boundary_bbox bool = false
  19  bp_inside           bool     = false
  20  mining_type         MiningType = MAX_NEGATIVE
  21  nms_param           NonMaximumSuppressionParameter
  22  sample_size         int32    = 64
  23  use_prior_for_nms   bool     = false

message NormalizeParameter
  1   across_spatial      bool     = true
  2   scale_filler        FillerParameter
  3   channel_shared      bool     = true
  4   eps                 float    = 1e-10

message CenterLossParameter    # ydwen/caffe-face's CenterLoss (Wen et al., ECCV 2016)
  1   num_output          uint32
  2   center_filler       FillerParameter
  3   axis                int32    = 1

enum MarginType          SINGLE=0 DOUBLE=1 TRIPLE=2 QUADRUPLE=3
message MarginInnerProductParameter  # SphereFace's A-Softmax layer (wy1iu/sphereface)
  1   num_output          uint32
  2   type                MarginType = SINGLE
  3   weight_filler       FillerParameter
  4   axis                int32    = 1
  5   base                float    = 1
  6   gamma               float    = 0
  7   power               float    = 1
  8   iteration           int32    = 0
  9   lambda_min          float    = 0

message LabelSpecificAddParameter  # AM-Softmax's additive margin (happynear's forks)
  1   bias                float    = 0
  2   transform_test      bool     = false
  3   bias_base           float    = 0   # 3-8: happynear's caffe-windows, the margin's annealing
  4   bias_gamma          float    = 0   # (AM-Softmax's face_train_test_wo_fn.prototxt)
  5   bias_power          float    = 1
  6   bias_min            float    = 0
  7   bias_max            float    = 0
  8   iteration           uint32   = 0

# --- happynear's caffe-windows: Normalize with normalize_param (the message is NormalizeParameter
# there; renamed here, SSD's Normalize has that name) ----------------------------------------

message FaceNormalizeParameter  # happynear's Normalize (AM-Softmax's and NormFace's norm1)
  1   normalize_type      string   = "L2"
  2   fix_gradient        bool     = false
  3   bp_norm             bool     = false

message ChannelScaleParameter  # happynear's ChannelScale (x times a per-place scale bottom)
  1   do_forward          bool     = true
  2   do_backward_feature bool     = true
  3   do_backward_scale   bool     = true
  4   global_scale        bool     = false
  5   max_global_scale    float    = 1000
  6   min_global_scale    float    = 0
  7   init_global_scale   float    = 1   # read by no code of the fork

message FlipParameter  # happynear's Flip (mirror a blob along its width and/or height)
  1   flip_width          bool     = true
  2   flip_height         bool     = false

# --- zimenglan-sysu-512/Focal-Loss: FocalLoss (softmax form) ---------------------------------

enum FocalLossType       ORIGIN=0 LINEAR=1 ONEADDP=2  # ONEADDP: happynear's copy only
message FocalLossParameter  # Lin et al. 2017, softmax over softmax_param.axis
  1   type                FocalLossType = ORIGIN
  2   gamma               float    = 2
  3   alpha               float    = 0.25
  4   beta                float    = 1

# --- Longqi-S/Focal-Loss: SoftmaxWithFocalLoss (softmax_focal_loss_param 157 above) ------------

message SoftmaxFocalLossParameter  # alpha (1 - p_t)^gamma (-log p_t), softmax over softmax_param
  1   alpha               float    = 0.25
  2   gamma               float    = 2

# --- SSD fork: DetectionEvaluate (detection_evaluate_param 205 above; the solver's eval_type,
# ap_version, show_per_class_result in SolverParameter; ResizeParameter and its enums are with
# AnnotatedData's messages below) -------------------------------------------------------------

message DetectionEvaluateParameter  # SSD's DetectionEvaluate (mAP rows for the solver)
  1   num_classes         uint32
  2   background_label_id uint32   = 0
  3   overlap_threshold   float    = 0.5
  4   evaluate_difficult_gt bool   = true
  5   name_size_file      string
  6   resize_param        ResizeParameter

message V1LayerParameter
  1   layer               V0LayerParameter
  2   bottom              string   repeated
  3   top                 string   repeated
  4   name                string
  5   type                V1LayerType
  6   blobs               BlobProto repeated
  7   blobs_lr            float    repeated
  8   weight_decay        float    repeated
  9   concat_param        ConcatParameter
  10  convolution_param   ConvolutionParameter
  11  data_param          DataParameter
  12  dropout_param       DropoutParameter
  13  hdf5_data_param     HDF5DataParameter
  14  hdf5_output_param   HDF5OutputParameter
  15  image_data_param    ImageDataParameter
  16  infogain_loss_param InfogainLossParameter
  17  inner_product_param InnerProductParameter
  18  lrn_param           LRNParameter
  19  pooling_param       PoolingParameter
  20  window_data_param   WindowDataParameter
  21  power_param         PowerParameter
  22  memory_data_param   MemoryDataParameter
  23  argmax_param        ArgMaxParameter
  24  eltwise_param       EltwiseParameter
  25  threshold_param     ThresholdParameter
  26  dummy_data_param    DummyDataParameter
  27  accuracy_param      AccuracyParameter
  29  hinge_loss_param    HingeLossParameter
  30  relu_param          ReLUParameter
  31  slice_param         SliceParameter
  32  include             NetStateRule repeated
  33  exclude             NetStateRule repeated
  34  mvn_param           MVNParameter
  35  loss_weight         float    repeated
  36  transform_param     TransformationParameter
  37  tanh_param          TanHParameter
  38  sigmoid_param       SigmoidParameter
  39  softmax_param       SoftmaxParameter
  40  contrastive_loss_param ContrastiveLossParameter
  41  exp_param           ExpParameter
  42  loss_param          LossParameter
  43  interp_param        InterpParameter       # DeepLab v1 (deeplab-public) from here on;
  9042 seg_accuracy_param SegAccuracyParameter  # its V1 enum names above (IMAGE_SEG_DATA is
  44  softmaxloss_param   SoftmaxLossParameter  # its 39, BVLC's DECONVOLUTION), its 42
  46  mat_write_param     MatWriteParameter     # is BVLC's loss_param
  47  mat_read_param      MatReadParameter      # DeepLab v1's numbers, clear of BVLC's V1
  48  dense_crf_param     DenseCRFParameter
  1001 param              string   repeated
  1002 blob_share_mode    DimCheckMode repeated

message V0LayerParameter
  1   name                string
  2   type                string
  3   num_output          uint32
  4   biasterm            bool     = true
  5   weight_filler       FillerParameter
  6   bias_filler         FillerParameter
  7   pad                 uint32   = 0
  8   kernelsize          uint32
  9   group               uint32   = 1
  10  stride              uint32   = 1
  11  pool                PoolMethod = MAX
  12  dropout_ratio       float    = 0.5
  13  local_size          uint32   = 5
  14  alpha               float    = 1
  15  beta                float    = 0.75
  16  source              string
  17  scale               float    = 1
  18  meanfile            string
  19  batchsize           uint32
  20  cropsize            uint32   = 0
  21  mirror              bool     = false
  22  k                   float    = 1
  50  blobs               BlobProto repeated
  51  blobs_lr            float    repeated
  52  weight_decay        float    repeated
  53  rand_skip           uint32   = 0
  54  det_fg_threshold    float    = 0.5
  55  det_bg_threshold    float    = 0.5
  56  det_fg_fraction     float    = 0.25
  58  det_context_pad     uint32   = 0
  59  det_crop_mode       string   = "warp"
  60  new_num             int32    = 0
  61  new_channels        int32    = 0
  62  new_height          int32    = 0
  63  new_width           int32    = 0
  64  shuffle_images      bool     = false
  65  concat_dim          uint32   = 1
  1001 hdf5_output_param  HDF5OutputParameter

# --- SSD (weiliu89/caffe, branch ssd): AnnotatedData's records, samplers and transforms --------
enum AnnotationType      BBOX=0
enum ResizeMode          WARP=1 FIT_SMALL_SIZE=2 FIT_LARGE_SIZE_AND_PAD=3
enum PadMode             CONSTANT=1 MIRRORED=2 REPEAT_NEAREST=3
enum InterpMode          LINEAR=1 AREA=2 NEAREST=3 CUBIC=4 LANCZOS4=5
enum EmitType            CENTER=0 MIN_OVERLAP=1

message NormalizedBBox
  1   xmin                float
  2   ymin                float
  3   xmax                float
  4   ymax                float
  5   label               int32
  6   difficult           bool
  7   score               float
  8   size                float

message Annotation
  1   instance_id         int32    = 0
  2   bbox                NormalizedBBox

message AnnotationGroup
  1   group_label         int32
  2   annotation          Annotation repeated

message AnnotatedDatum
  1   datum               Datum
  2   type                AnnotationType
  3   annotation_group    AnnotationGroup repeated

message LabelMapItem
  1   name                string
  2   label               int32
  3   display_name        string

message LabelMap
  1   item                LabelMapItem repeated

message Sampler
  1   min_scale           float    = 1
  2   max_scale           float    = 1
  3   min_aspect_ratio    float    = 1
  4   max_aspect_ratio    float    = 1

message SampleConstraint
  1   min_jaccard_overlap float
  2   max_jaccard_overlap float
  3   min_sample_coverage float
  4   max_sample_coverage float
  5   min_object_coverage float
  6   max_object_coverage float

message BatchSampler
  1   use_original_image  bool     = true
  2   sampler             Sampler
  3   sample_constraint   SampleConstraint
  4   max_sample          uint32
  5   max_trials          uint32   = 100

message EmitConstraint
  1   emit_type           EmitType = CENTER
  2   emit_overlap        float

message AnnotatedDataParameter
  1   batch_sampler       BatchSampler repeated
  2   label_map_file      string
  3   anno_type           AnnotationType

message ResizeParameter
  1   prob                float    = 1
  2   resize_mode         ResizeMode = WARP
  3   height              uint32   = 0
  4   width               uint32   = 0
  5   pad_mode            PadMode  = CONSTANT
  6   pad_value           float    repeated
  7   interp_mode         InterpMode repeated
  8   height_scale        uint32   = 0
  9   width_scale         uint32   = 0

message SaltPepperParameter
  1   fraction            float    = 0
  2   value               float    repeated

message NoiseParameter
  1   prob                float    = 0
  2   hist_eq             bool     = false
  3   inverse             bool     = false
  4   decolorize          bool     = false
  5   gauss_blur          bool     = false
  6   jpeg                float    = -1
  7   posterize           bool     = false
  8   erode               bool     = false
  9   saltpepper          bool     = false
  10  saltpepper_param    SaltPepperParameter
  11  clahe               bool     = false
  12  convert_to_hsv      bool     = false
  13  convert_to_lab      bool     = false

message DistortionParameter
  1   brightness_prob     float    = 0
  2   brightness_delta    float    = 0
  3   contrast_prob       float    = 0
  4   contrast_lower      float    = 0
  5   contrast_upper      float    = 0
  6   hue_prob            float    = 0
  7   hue_delta           float    = 0
  8   saturation_prob     float    = 0
  9   saturation_lower    float    = 0
  10  saturation_upper    float    = 0
  11  random_order_prob   float    = 0

message ExpansionParameter
  1   prob                float    = 1
  2   max_expand_ratio    float    = 1

# --- DeepLab fork: DenseCRF and MatRead (deeplab-public-ver2; v1's messages lack 7) ---
message DenseCRFParameter      # DeepLab's DenseCRF (mean field over a permutohedral lattice)
  1   max_iter            int32    = 10
  2   pos_xy_std          float    repeated
  3   pos_w               float    repeated
  4   bi_xy_std           float    repeated
  5   bi_rgb_std          float    repeated
  6   bi_w                float    repeated
  7   output_probability  bool     = true    # false: log(max(prob, FLT_MIN))

message MatReadParameter       # DeepLab's MatRead (prefix is required there)
  1   prefix              string
  2   source              string   = ""
  3   strip               int32    = 0
  4   batch_size          int32    = 1
"""

# --- descriptors -------------------------------------------------------------------------------

SCALAR_TYPES = ("int32", "int64", "uint32", "uint64", "bool", "float", "double", "string", "bytes")
INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
ARRAY_DTYPES = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}


class EnumValue(str):
    """An enum field's value: its name ("MAX" prints, compares and hashes as the string) that
    also equals its number, as protobuf's int values do: ``pool == 0``, ``phase == 1``, and
    int() or an index give the number. (A dict keyed by numbers does not find it: its hash is
    the name's.)"""

    def __new__(cls, name, number, enum_name):
        self = super().__new__(cls, name)
        self.number, self.enum_name = number, enum_name
        return self

    def __eq__(self, other):
        if isinstance(other, numbers.Integral) and not isinstance(other, bool):
            return self.number == other
        return str.__eq__(self, other)

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = str.__hash__

    def __int__(self):
        return self.number

    __index__ = __int__

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return _enum_value, (self.enum_name, str(self))


def _enum_value(enum_name, name):
    return ENUMS[enum_name].members[name]


class EnumDescriptor:
    def __init__(self, name, values):
        self.name = name
        self.values = dict(values)                       # name -> number
        self.members = {k: EnumValue(k, v, name) for k, v in self.values.items()}
        # number -> the first name listed with it
        self.names = {v: self.members[k] for k, v in reversed(list(self.values.items()))}

    def __repr__(self):
        return f"<enum {self.name}>"


class FieldDescriptor:
    """One field: ``kind`` is 'scalar', 'enum' or 'message'; ``type`` the scalar type or the
    enum/message name."""

    def __init__(self, number, name, type_name, repeated, packed, array, default_text):
        self.number, self.name, self.type_name = number, name, type_name
        self.repeated, self.packed, self.array = repeated, packed, array
        self.default_text = default_text
        self.kind = None            # resolved by _link()
        self.enum = None            # EnumDescriptor for enum fields
        self.message = None         # MessageDescriptor for message fields
        self.default = None

    @property
    def is_message(self):
        return self.kind == "message"

    def __repr__(self):
        label = " repeated" if self.repeated else ""
        return f"<field {self.name}={self.number} {self.type_name}{label}>"


class MessageDescriptor:
    def __init__(self, name):
        self.name = name
        self.fields = []                 # in declaration order
        self.fields_by_name = {}
        self.fields_by_number = {}
        self.cls = None                  # the Message subclass, set by message.py

    def add(self, field):
        if field.name in self.fields_by_name or field.number in self.fields_by_number:
            raise ValueError(f"schema: duplicate field {field.name}={field.number} in {self.name}")
        self.fields.append(field)
        self.fields_by_name[field.name] = field
        self.fields_by_number[field.number] = field

    def __repr__(self):
        return f"<message {self.name}>"


def _parse_default(field):
    text = field.default_text
    if field.kind == "enum":
        if text is None:
            return next(iter(field.enum.members.values()))   # proto2: the first value listed
        if text not in field.enum.values:
            raise ValueError(f"schema: bad default {text} for {field.name}")
        return field.enum.members[text]
    t = field.type_name
    if text is None:
        return {"bool": False, "string": "", "bytes": b"", "float": 0.0, "double": 0.0}.get(t, 0)
    if t == "bool":
        return text == "true"
    if t == "string":
        return text.strip('"')
    if t == "float":
        return float(np.float32(float(text)))              # Caffe stores these as float32
    if t == "double":
        return float(text)
    return int(text)


def _load(schema_text):
    enums, messages, current = {}, {}, None
    lines = schema_text.strip().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].split("#")[0].strip()                # '#' starts a comment
        i += 1
        if not line:
            continue
        words = line.split()
        if words[0] in ("enum", "message") and (words[1] in enums or words[1] in messages):
            raise ValueError(f"schema: {words[1]} is defined twice")   # the later would win
        if words[0] == "enum":
            pairs = words[2:]
            while i < len(lines) and lines[i].startswith(" ") and "=" in lines[i] \
                    and not lines[i].strip()[0].isdigit():
                pairs += lines[i].split()
                i += 1
            enums[words[1]] = EnumDescriptor(words[1], [(p.split("=")[0], int(p.split("=")[1]))
                                                        for p in pairs])
        elif words[0] == "message":
            current = messages[words[1]] = MessageDescriptor(words[1])
        else:
            default = None
            if "=" in words:
                k = words.index("=")
                default, words = " ".join(words[k + 1:]), words[:k]
            number, name, type_name, flags = int(words[0]), words[1], words[2], set(words[3:])
            current.add(FieldDescriptor(number, name, type_name, "repeated" in flags,
                                        "packed" in flags, "array" in flags, default))
    for msg in messages.values():
        for f in msg.fields:
            if f.type_name in SCALAR_TYPES:
                f.kind = "scalar"
            elif f.type_name in enums:
                f.kind, f.enum = "enum", enums[f.type_name]
            elif f.type_name in messages:
                f.kind, f.message = "message", messages[f.type_name]
            else:
                raise ValueError(f"schema: unknown type {f.type_name} of {msg.name}.{f.name}")
            f.default = None if f.kind == "message" or f.repeated else _parse_default(f)
    return enums, messages


ENUMS, MESSAGES = _load(SCHEMA)
